"""Replay: general examples mixed into the training data (multi-task rehearsal)."""

from __future__ import annotations

from tunelab.config.forgetting_section import ReplayConfig
from tunelab.data.tokenize import Encoded
from tunelab.errors import ConfigError
from tunelab.forgetting.mitigations.base import (
    general_pool,
    seeded_stream,
)
from tunelab.models.task_model import TaskModel
from tunelab.training.hooks import Context, Mitigation

__all__ = ["Replay", "replay_count"]


def replay_count(n_train: int, ratio: float) -> int:
    """General examples to add so they are ``ratio`` of the mixed list: round(n·r / (1−r))."""
    return round(n_train * ratio / (1 - ratio))


class Replay(Mitigation):
    """Train on the task examples plus general ones, ``ratio`` of the final list.

    Rehearsal of earlier data (Robins, 1995; in LLM fine-tuning, e.g. "mixing in
    pre-training data", Ouyang et al. 2022): the general examples carry the ordinary
    next-token loss on their response tokens, so the model keeps practising what the
    retention suite measures. Examples come from ``ctx.replay`` when given, else
    ``ctx.general``, in a seeded order (every pool example once before any repeats, so a
    pool smaller than needed is cycled). They join the task data before the loop's
    shuffling, so batches mix both. Needs an LM head: a classifier head has no loss for
    general text. Memory: +0 (the examples only).
    """

    name = "replay"

    def __init__(self, options: ReplayConfig) -> None:
        self.ratio = options.ratio

    def train_examples(self, train: list[Encoded], ctx: Context) -> list[Encoded]:
        count = replay_count(len(train), self.ratio)
        if count == 0:
            return list(train)
        pool = general_pool(ctx, self.name, prefer_replay=True)
        idx = seeded_stream(len(pool), count, seed=ctx.seed, stream="replay")
        return list(train) + [pool[i] for i in idx]

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        if model.head == "classifier":
            raise ConfigError(
                "forgetting.mitigations.replay needs method.head: lm (a classifier head has "
                "no loss for general text)",
                hint="use method.head: lm, or another mitigation (ewc, l2sp, kd, wise)",
            )
