"""Training objectives: what the loop minimises, one file each, behind an explicit registry.

The loop (``training/loop.py``) is the same for every objective: it orders and cuts the
training examples into pieces, runs ``model(piece, objective.loss)`` forward and backward,
divides the summed loss by the step's terms, and handles accumulation, data parallelism,
the non-finite policy, the mitigations' penalties, validation, early stopping and
checkpoints. An objective says what one piece's loss is. Adding one (a preference
objective such as DPO or KTO) is one new file plus one line in ``OBJECTIVES``; the
contract test in ``tests/test_objectives.py`` picks it up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tunelab.data.tokenize import Encoded
from tunelab.errors import ConfigError
from tunelab.models.task_model import TaskModel
from tunelab.training.objectives.classifier import Classifier
from tunelab.training.objectives.distill import Distill
from tunelab.training.objectives.lm import LM

__all__ = ["LM", "OBJECTIVES", "Classifier", "Distill", "Objective", "for_head", "get_objective"]

Logs = dict[str, float]


class Objective(Protocol):
    """What the training loop minimises.

    ``name``: the registry key. ``fields``: per-example numbers the objective reads from a
    collated batch (``Encoded.extras``, one (B,) tensor each); training refuses examples
    without them, and packing (rows shared by several examples) for an objective that has
    any. ``log_names``: the keys of the scalar logs ``loss`` returns, in this order on every
    rank; the loop sums them over pieces and ranks, divides them by the step's terms like
    the loss, and logs them as ``loss.<name>``.

    - ``prepare(model, train)``: once before the first step, on a resumed run too (after
      the restore), with the list the loop trains on. Values cached here (a preference
      objective's reference log-probabilities, computed once with the model as it starts)
      must come out the same on resume: they are never checkpointed.
    - ``terms(example)``: the loss terms one example contributes, known before any
      forward; a step's summed loss is divided by the epoch's mean terms per step.
    - ``loss(model, batch)``: (Σ of the loss over the batch, a scalar tensor; the terms
      of that sum; {log name: summed value}). It runs inside the model's forward
      (``model(batch, objective.loss)``), so a DDP or FSDP wrapper sees every parameter
      it uses; it may run several forwards per example (chosen and rejected responses).
    """

    name: str
    fields: tuple[str, ...]
    log_names: tuple[str, ...]

    def prepare(self, model: TaskModel, train: Sequence[Encoded]) -> None: ...

    def terms(self, example: Encoded) -> float: ...

    def loss(
        self, model: TaskModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, float, Logs]: ...


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "lm": LM,
    "classifier": Classifier,
    "distill": Distill,
}


def get_objective(name: str, **options: object) -> Objective:
    """The registered objective ``name`` built with ``options``; ConfigError if unknown."""
    if name not in OBJECTIVES:
        raise ConfigError(
            f"unknown training objective {name!r}", hint=f"choose from {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[name](**options)


def for_head(head: str) -> Objective:
    """The objective a task model's head trains with: ``lm`` or ``classifier``."""
    return get_objective(head)
