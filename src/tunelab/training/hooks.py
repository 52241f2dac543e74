"""The hooks a forgetting mitigation (a regulariser) plugs into the training loop.

The loop (``training/loop.py``) calls, in this order:

- ``prepare(model, ctx)`` once before the first step. A fresh run calls it alone; a
  resumed run first calls ``load_state_dict`` with what ``state_dict`` returned at the
  checkpoint, then ``prepare``, so ``prepare`` computes only what was not restored (EWC
  estimates its Fisher only when none was loaded; KD rebuilds its teacher every time).
  ``ctx.anchor`` is filled before ``prepare`` and is the same on resume.
- per optimizer step, after the task loss of every micro-batch was backpropagated:
  ``penalty(model, step)``: a scalar tensor (already multiplied by the mitigation's
  strength) that the loop backpropagates and logs as ``penalty.<name>``; None for none.
  ``step`` keys any sampling (KD's general batch), so a resumed run passes the same value
  for the same step (the loop passes the number of steps already done: 0 for the first).
- gradient clipping (penalty gradients included), then ``before_step(model)`` with
  gradients final, before ``optimizer.step()``; ``after_step(model)`` right after it and
  before the gradients are zeroed (SI reads the update and the gradient there).
- ``finish(model, folder)`` once after training, with the best weights loaded, before the
  model is saved into ``folder`` (SI writes its importances; WiSE interpolates, last).

A mitigation may also change the training data: ``train_examples(train, ctx)`` returns the
list the loop trains on (replay mixes general examples in). Every hook has a do-nothing
default, so a mitigation implements only what it uses. The mitigations themselves live in
``forgetting/mitigations/``, one file each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from tunelab.data.tokenize import Encoded
from tunelab.models.task_model import TaskModel

__all__ = ["Context", "Mitigation", "trainable_params"]


@dataclass
class Context:
    """What mitigations may read; the runner builds it once per run.

    ``general``: general-domain LM examples, disjoint from the retention suite's probes
    (Fisher estimation, SI's consolidation path, distillation batches, replay).
    ``replay``: examples that replay and KD draw from instead of ``general`` when given
    (e.g. an earlier task's data). ``anchor``: a detached copy of the trainable parameters
    at the start of training (name → tensor, on the model's device, identical on resume),
    shared by every mitigation that pulls toward the start. ``seed``: for any sampling.
    ``lr``: the training learning rate (SI's consolidation path uses it).
    """

    general: list[Encoded]
    pad_id: int
    batch_size: int
    precision: str
    seed: int
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)
    lr: float = 1e-4
    replay: list[Encoded] | None = None


def trainable_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """name → parameter for parameters with ``requires_grad`` (the names of ``anchor``)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Mitigation:
    """Base class; subclasses set ``name`` and override the hooks they need."""

    name: ClassVar[str] = ""

    def train_examples(self, train: list[Encoded], ctx: Context) -> list[Encoded]:
        return train

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        """Called once before the first step, after ``load_state_dict`` on resume."""

    def penalty(self, model: TaskModel, step: int) -> torch.Tensor | None:
        return None

    def before_step(self, model: TaskModel) -> None:
        """Gradients are final (clipped); parameters not yet updated."""

    def after_step(self, model: TaskModel) -> None:
        """Parameters were just updated by the optimizer; gradients not yet zeroed."""

    def finish(self, model: TaskModel, folder: Path) -> dict[str, Any]:
        """After training; returns facts for results.json (may be empty)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that must survive a checkpoint for exact resume (CPU, contiguous)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned (called before ``prepare`` on resume)."""
