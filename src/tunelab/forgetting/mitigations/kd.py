"""Distillation from the starting model on general data: learning without forgetting."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

from tunelab.config.forgetting_section import KdConfig
from tunelab.data.batching import collate
from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.forgetting.mitigations.base import (
    general_pool,
    seeded_stream,
)
from tunelab.models.loss import chunked_kl
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel
from tunelab.training.hooks import Context, Mitigation

__all__ = ["KD", "chunked_kl"]

Head = Callable[[torch.Tensor], torch.Tensor]


class KD(Mitigation):
    """``strength`` · T² · mean over positions of KL(p_teacher ‖ p_student) on general data.

    Learning without forgetting (Li & Hoiem, "Learning without forgetting", ECCV 2016;
    T² keeps gradient sizes independent of T, Hinton et al. 2015). Each step draws a
    general batch — ``batch_size`` (default ``ctx.batch_size``) examples of ``ctx.replay``
    when given, else ``ctx.general``, a pure function of ``(ctx.seed, step)`` — and
    compares next-token distributions at its labelled positions (labels != -100); hidden
    states of those positions are gathered before the LM head, which is applied
    ``CHUNK`` rows at a time (:func:`chunked_kl`).

    The teacher is the starting model. LoRA: the same model with its adapters disabled
    (``model.lm.disable_adapter()``), under no_grad and in eval mode — no second copy.
    Full fine-tuning: a frozen deep copy of ``model.lm`` (decoder + LM head) holding
    ``ctx.anchor``'s values, built in ``prepare`` (on resume too: it is never saved).

    Memory: LoRA +0; full fine-tuning +4P bytes (one fp32 copy of the P-parameter LM).
    Compute: one extra forward+backward of the student and one teacher forward on a
    general batch per optimizer step.
    """

    name = "kd"

    def __init__(self, options: KdConfig) -> None:
        self.strength = options.strength
        self.temperature = options.temperature
        self.batch_size = options.batch_size
        self.teacher: TaskModel | None = None  # full fine-tuning only
        self.pool: list[Encoded] = []
        self.ctx: Context | None = None

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        self.ctx = ctx
        self.pool = general_pool(ctx, self.name, prefer_replay=True)
        self.teacher = None if isinstance(model.lm, PeftModel) else _frozen_copy(model, ctx)

    def penalty(self, model: TaskModel, step: int) -> torch.Tensor | None:
        if self.ctx is None:
            raise RuntimeError("KD.penalty called before prepare")
        batch = self.general_batch(model, step)
        selected = batch["labels"][:, 1:] != IGNORE  # (B, T-1)
        positions = int(selected.sum())
        if positions == 0:
            return None
        device = batch["input_ids"].device
        with autocast(self.ctx.precision, device):
            h_t = self._teacher_hidden(model, batch)[:, :-1][selected]  # (N, H)
            h_s = model.hidden(batch["input_ids"], batch["attention_mask"])[:, :-1][selected]
            kl = chunked_kl(model.lm_head, self._teacher_head(model), h_s, h_t, self.temperature)
        return kl * (self.strength * self.temperature**2 / positions)

    def general_batch(self, model: TaskModel, step: int) -> dict[str, torch.Tensor]:
        """The collated general batch of ``step`` (on the model's device)."""
        if self.ctx is None:
            raise RuntimeError("KD.general_batch called before prepare")
        size = self.batch_size or self.ctx.batch_size
        idx = seeded_stream(
            len(self.pool), size, seed=self.ctx.seed, stream="kd", start=step * size
        )
        device = next(model.parameters()).device
        return {
            k: v.to(device)
            for k, v in collate([self.pool[i] for i in idx], self.ctx.pad_id).items()
        }

    @torch.no_grad()
    def teacher_logits(self, model: TaskModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's next-token logits at the labelled positions of ``batch``, (N, V)."""
        selected = batch["labels"][:, 1:] != IGNORE
        h = self._teacher_hidden(model, batch)[:, :-1][selected]
        return self._teacher_head(model)(h).float()

    # ---- the teacher ------------------------------------------------------------------

    @torch.no_grad()
    def _teacher_hidden(self, model: TaskModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.teacher is not None:
            return self.teacher.hidden(batch["input_ids"], batch["attention_mask"])
        with _base_model(model):
            return model.hidden(batch["input_ids"], batch["attention_mask"])

    def _teacher_head(self, model: TaskModel) -> Head:
        if self.teacher is not None:
            return self.teacher.lm_head
        if not isinstance(model.lm_head, BaseTunerLayer):
            return model.lm_head  # not adapted: frozen, the teacher's own head

        def head(h: torch.Tensor) -> torch.Tensor:
            with _base_model(model):
                return model.lm_head(h)

        return head


@contextlib.contextmanager
def _base_model(model: TaskModel) -> Iterator[None]:
    """The LoRA model without its adapters, in eval mode (no dropout); restored after."""
    was_training = model.training
    model.eval()
    try:
        with model.lm.disable_adapter():
            yield
    finally:
        model.train(was_training)


def _frozen_copy(model: TaskModel, ctx: Context) -> TaskModel:
    """A frozen, eval-mode deep copy of the LM (decoder + LM head) at ``ctx.anchor``."""
    teacher = TaskModel(copy.deepcopy(model.lm), head="lm")
    params: dict[str, Any] = dict(teacher.named_parameters())
    with torch.no_grad():
        for name, value in ctx.anchor.items():
            if name in params:  # the classifier head (if any) is not part of the teacher
                params[name].copy_(value)
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher.eval()
