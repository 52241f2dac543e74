"""What every mitigation is: a few hooks the training loop calls at fixed places.

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
default, so a mitigation implements only what it uses.

The helpers below are shared by the mitigations: option checks that raise one
:class:`~tunelab.errors.ConfigError` naming every bad option, the seeded example stream
that every per-step sample is drawn from, and the general-data language-modelling loss.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import ConfigError
from tunelab.models.task_model import TaskModel
from tunelab.training.loss import chunked_cross_entropy

__all__ = [
    "Context",
    "Mitigation",
    "check_options",
    "general_pool",
    "is_number",
    "lm_nll",
    "seeded_stream",
    "trainable_params",
]


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


# ---- option checks --------------------------------------------------------------------


def is_number(value: Any, *, low: float | None = None, high: float | None = None) -> bool:
    """A finite int/float (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def check_options(name: str, checks: Sequence[tuple[str, Any, bool, str]]) -> None:
    """Raise one ConfigError listing every ``(option, value, ok, what it must be)`` not ok."""
    problems = [
        (f"forgetting.mitigations.{name}.{option}", f"got {value!r}; must be {must}")
        for option, value, ok, must in checks
        if not ok
    ]
    if problems:
        raise ConfigError(
            f"invalid options for the {name!r} forgetting mitigation",
            problems=problems,
            hint="fix the values under forgetting.mitigations in the config",
        )


# ---- general data ---------------------------------------------------------------------


def general_pool(ctx: Context, name: str, *, prefer_replay: bool = False) -> list[Encoded]:
    """``ctx.replay`` (when preferred and given) or ``ctx.general``; never empty."""
    pool = ctx.replay if prefer_replay and ctx.replay is not None else ctx.general
    if not pool:
        raise ConfigError(
            f"forgetting.mitigations.{name} needs general-domain examples, and there are none",
            hint="raise forgetting.general_examples (or give the mitigation a `source`)",
        )
    return pool


def seeded_stream(n: int, count: int, *, seed: int, stream: str, start: int = 0) -> list[int]:
    """Positions ``start .. start+count-1`` of an endless sequence of indices into ``n`` items.

    The sequence is one seeded permutation of ``range(n)`` after another (permutation k is
    drawn from ``(seed, stream, k)``), so every item appears once before any repeats and a
    slice is a pure function of its arguments: per-step samples need no saved RNG state.
    ``stream`` separates the draws of different mitigations.
    """
    if n <= 0:
        raise ValueError("cannot draw from an empty pool")
    key = zlib.crc32(stream.encode())
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed % 2**32, key, epoch]).permutation(n)
        take = perm[offset : offset + count - len(out)].tolist()
        out.extend(take)
        pos += len(take)
    return out


def lm_nll(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token CE over the labelled tokens of a collated LM batch, and its count.

    The LM-head branch of :func:`tunelab.training.loss.batch_loss` (equal for ``head="lm"``,
    tested), used whatever the task head is: a classifier-head model keeps its LM head and
    body, and their general language modelling is what the mitigations protect.
    """
    hidden = model.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
    selected = targets != IGNORE
    h = hidden[:, :-1][selected]  # (N, H)
    return chunked_cross_entropy(model.lm_head, h, targets[selected]), int(selected.sum())
