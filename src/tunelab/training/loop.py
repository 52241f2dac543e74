"""The training loop: one function, read top to bottom.

Everything that happens during training is visible in :func:`fit`: batch order, the
forward/backward of each piece of a step through the objective, the forgetting
mitigations' penalties, clipping, the optimizer step, logging, validation, early stopping
and checkpoints. Helpers below compute values; they decide nothing. What is built before
the first step (optimizer, schedule, the restored checkpoint, the mitigations' data) is
:func:`tunelab.training.setup.train`'s.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config.schema import TrainConfig
from tunelab.data.batching import micro_batches, train_batches
from tunelab.data.tokenize import Encoded
from tunelab.errors import TrainingError
from tunelab.models.nll import loss_pieces, loss_sums
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel
from tunelab.training.checkpoint import TrainState, read_pointer, rng_state, save_checkpoint
from tunelab.training.distributed import Dist
from tunelab.training.hooks import Mitigation
from tunelab.training.metrics_log import MetricsLog
from tunelab.training.objectives import Objective
from tunelab.training.sharding import held_mb

__all__ = ["LoopSettings", "Parts", "fit"]

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class LoopSettings:
    """The validated ``train`` section (every knob declared there, once) and what only the
    run knows."""

    train: TrainConfig
    precision: str  # resolved: "fp32" | "bf16"
    pad_id: int
    row_tokens: int | None = None  # packed row length (the data's max_length)


@dataclass
class Parts:
    """What :func:`~tunelab.training.setup.train` builds and :func:`fit` runs: the model
    and the module its forward/backward run through (``engine``: DDP around the model, or
    the model sharded in place), what is minimised, how a step updates, where it writes."""

    model: TaskModel
    engine: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    mitigations: Sequence[Mitigation]
    dist: Dist
    checkpoints: Path
    config_yaml: str
    log: MetricsLog
    progress: Progress | None = None
    val_metrics: Callable[[TaskModel, int], dict[str, float]] | None = None


def fit(
    p: Parts, train: Sequence[Encoded], val: Sequence[Encoded], s: LoopSettings,
    state: TrainState, total: int,
) -> TrainState:  # fmt: skip
    """Train ``p.model`` in place from ``state`` to ``total`` optimizer steps (or an early
    stop); return the final loop state (best step, why it stopped).

    Every rank of a data-parallel job (``p.dist``, DDP or FSDP) runs this function; the
    ranks agree on every decision because each one is taken on values summed over all
    ranks. Only rank 0 writes (log, checkpoints). ``p.val_metrics(model, step)`` runs at
    each validation and returns task-metric scalars logged beside the val loss.
    """
    t, dist, model, log = s.train, p.dist, p.model, p.log
    span = t.grad_accum * dist.world  # micro-batches per optimizer step, all ranks together
    trainable = [q for q in model.parameters() if q.requires_grad]
    lengths = [e.length for e in train]
    terms_of = [p.objective.terms(e) for e in train]
    started = time.perf_counter() - state.elapsed
    model.train()

    while state.step < total and state.stopped is None:
        order = train_batches(
            lengths, t.batch_size, seed=t.seed, epoch=state.epoch, pool=t.length_grouping
        )
        # Every loss term weighs the same over the epoch: a step's summed loss is divided by
        # the epoch's mean terms per step, not by its own count. Length-grouped batches make
        # that count vary (short rows, few response tokens); dividing by it would give the
        # tokens of short-row steps more weight than random batches give them.
        per_step = sum(terms_of) / math.ceil(len(order) / span)
        while state.batch_in_epoch < len(order) and state.step < total:
            # ---- one optimizer step over grad_accum micro-batches per process ------------
            # The step's micro-batches are dealt round-robin to the processes: each is
            # trained on by exactly one rank, and N processes with grad_accum A take the
            # same steps as one process with grad_accum N x A.
            micro = order[state.batch_in_epoch : state.batch_in_epoch + span]
            terms = sum(terms_of[i] for idx in micro for i in idx)
            pieces = _rank_pieces(micro, train, s, dist, weight=dist.world / per_step)
            local, local_logs, penalties = _accumulate(
                p, pieces, s.precision, penalty=lambda: _penalty(p.mitigations, model, state.step)
            )
            padded = sum(int(b["input_ids"].numel()) for b, w in pieces if w)
            summed, padded_all, *logs = dist.all_sum([local, float(padded), *local_logs.values()])
            state.tokens += sum(lengths[i] for idx in micro for i in idx)
            state.padded_tokens += int(padded_all)
            step_loss = summed / terms
            grad_norm = _clip(trainable, t.max_grad_norm)
            if not math.isfinite(step_loss + sum(penalties.values()) + grad_norm):
                p.optimizer.zero_grad(set_to_none=True)
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                if t.nonfinite == "stop":
                    raise _nonfinite_error(what, step_loss, grad_norm, state.step, p.checkpoints)
                state.skipped += 1  # `skip`: this batch updates nothing; training goes on
                if dist.is_main:
                    log.write({"step": state.step + 1, "skipped": state.skipped, "why": what})
            else:
                for m in p.mitigations:
                    m.before_step(model)
                p.optimizer.step()
                for m in p.mitigations:
                    m.after_step(model)
                if state.held_mb is None:  # gradients and optimizer state all exist now
                    state.held_mb = held_mb(model, p.optimizer)
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += len(micro)
            state.elapsed = time.perf_counter() - started

            # ---- logging ------------------------------------------------------------
            parts = {k: v / terms for k, v in zip(local_logs, logs, strict=True)}
            if dist.is_main and (state.step % t.log_every == 0 or state.step == total):
                log.write(
                    {"step": state.step, "epoch": _epoch(state, len(order)), "loss": step_loss,
                     "lr": p.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                     "tokens": state.tokens, "elapsed": round(state.elapsed, 2), **penalties,
                     **parts}
                )  # fmt: skip
            if p.progress is not None:
                p.progress({"step": state.step, "total": total, "loss": step_loss,
                            "val_loss": state.best_val, "elapsed": state.elapsed})  # fmt: skip

            # ---- validation, early stopping, checkpoint ---------------------------------
            if state.step % t.eval_every == 0 or state.step == total:
                val_loss = _val_loss(p, val, s)
                improved = state.best_val is None or val_loss < state.best_val - _min_delta(t)
                if improved:
                    state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
                else:
                    state.bad_evals += 1
                if t.early_stopping is not None and state.bad_evals >= t.early_stopping.patience:
                    state.stopped = "early_stopping"
                elif state.step == total:
                    state.stopped = "completed"
                scalars: dict[str, float] = {}
                if p.val_metrics is not None:  # generation metrics: rank 0 (all ranks: FSDP)
                    with dist.gathered(model):
                        scalars = p.val_metrics(model, state.step)
                    model.train()
                if dist.is_main:
                    log.write({"step": state.step, "val_loss": val_loss,
                               "best_val": state.best_val, **scalars})  # fmt: skip
                    if p.progress is not None:
                        p.progress({"step": state.step, "total": total, "val_loss": val_loss})
                _checkpoint(p, state, is_best=improved, keep=t.keep_checkpoints)
                if state.stopped is not None:
                    break
        if state.batch_in_epoch >= len(order):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    log.flush()
    return state


def _rank_pieces(
    micro: list[list[int]], train: Sequence[Encoded], s: LoopSettings, dist: Dist, weight: float
) -> list[tuple[dict[str, torch.Tensor], float]]:
    """This rank's (piece, loss weight) pairs of one optimizer step.

    The step's micro-batches are dealt round-robin to the ranks, each split into pieces
    (``max_batch_tokens``, packing). A rank left without one (an epoch's uneven last step)
    still joins the gradient all-reduce, with the step's first piece weighted zero. Under
    FSDP every forward gathers weights from all ranks, so each rank runs as many pieces as
    the rank with most: the others repeat their last piece, weighted zero.
    """
    t = s.train

    def split(idx: list[int]) -> list[dict[str, torch.Tensor]]:
        return micro_batches(
            [train[i] for i in idx], s.pad_id, max_tokens=t.max_batch_tokens,
            packing=t.packing, row_tokens=s.row_tokens,
        )  # fmt: skip

    mine = [piece for idx in micro[dist.rank :: dist.world] for piece in split(idx)]
    pieces = [(b, weight) for b in mine] or [(split(micro[0])[0], 0.0)]
    pieces += [(pieces[-1][0], 0.0)] * (dist.most_forwards(len(pieces)) - len(pieces))
    return pieces


def _val_loss(p: Parts, val: Sequence[Encoded], s: LoopSettings) -> float:
    """Mean loss per term of the objective over the val examples; each rank scores its
    share and the sums are combined. Under FSDP every rank runs as many forwards (repeats
    uncounted), and the root unit's weights stay gathered through it and are sharded again
    after (a forward-only pass would leave them unsharded)."""
    dist, model, t = p.dist, p.model, s.train
    pieces = loss_pieces(val[dist.rank :: dist.world], s.pad_id, t.batch_size, t.max_batch_tokens)
    mine = len(pieces)
    if missing := dist.most_forwards(mine) - mine:
        pieces += loss_pieces(val[:1], s.pad_id, 1)[:1] * missing
    with dist.gathered(model):
        sums = loss_sums(model, pieces, s.precision, counted=mine, loss=p.objective.loss)
        total, terms = dist.all_sum(list(sums))
    model.train()
    return total / max(terms, 1)


def _checkpoint(p: Parts, state: TrainState, **settings: Any) -> None:
    """Save the step (rank 0 writes); every rank takes part in gathering the full tensors
    (FSDP) and the RNG states, and waits until the files exist, so a resume always finds
    a checkpoint every rank reached. ``settings``: ``save_checkpoint``'s is_best, keep."""
    dist, model = p.dist, p.model
    rngs = dist.gather(rng_state())  # every rank's, so each resumes its own
    trainable = dist.trainable_state(model)
    optimizer_state = dist.optimizer_state(model, p.optimizer)
    if dist.is_main:
        save_checkpoint(
            p.checkpoints, state=state, trainable=trainable,
            optimizer={"optimizer": optimizer_state, "scheduler": p.scheduler.state_dict()},
            extra={f"{m.name}/{k}": v for m in p.mitigations for k, v in m.state_dict().items()},
            rng=rngs, config_yaml=p.config_yaml, **settings,
        )  # fmt: skip
    dist.barrier()


def _accumulate(
    p: Parts,
    pieces: list[tuple[dict[str, torch.Tensor], float]],
    precision: str,
    *,
    penalty: Callable[[], tuple[torch.Tensor | float, dict[str, float]]],
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Forward and backward of this rank's (piece, weight) pairs of one step through the
    objective: gradients accumulate, and are reduced over the ranks in the last backward
    only, which also carries the mitigations' ``penalty()``. Returns the summed loss of the
    pieces that count (weight > 0), their summed objective logs (``loss.<name>``, every
    ``log_names`` key, in its order) and the penalties' values."""
    device = next(p.model.parameters()).device  # FSDP puts the shards on the rank's device
    local_loss, penalties = 0.0, dict[str, float]()
    local_logs = {f"loss.{n}": 0.0 for n in p.objective.log_names}
    for k, (batch, w) in enumerate(pieces):
        last = k == len(pieces) - 1
        with contextlib.nullcontext() if last else p.dist.no_sync(p.engine):
            with autocast(precision, device):
                loss_sum, _terms, logs = p.engine(_to(batch, device), p.objective.loss)
            objective = loss_sum * w
            if last:
                extra, penalties = penalty()
                objective = objective + extra if penalties else objective
            objective.backward()
        if w:
            local_loss += loss_sum.item()
            for n in p.objective.log_names:
                local_logs[f"loss.{n}"] += logs.get(n, 0.0)
    return local_loss, local_logs, penalties


def _penalty(
    mitigations: Sequence[Mitigation], model: TaskModel, step: int
) -> tuple[torch.Tensor | float, dict[str, float]]:
    """The mitigations' penalties summed (added to the step's objective) and each one's
    value for the log (``penalty.<name>``)."""
    total: torch.Tensor | float = 0.0
    values = {}
    for m in mitigations:
        penalty = m.penalty(model, step)
        if penalty is not None:
            total = total + penalty
            values[f"penalty.{m.name}"] = penalty.item()
    return total, values


def _nonfinite_error(
    what: str, loss: float, grad_norm: float, step: int, checkpoints: Path
) -> TrainingError:
    return TrainingError(
        f"{what} became non-finite (loss {loss}, gradient norm {grad_norm}) at step "
        f"{step + 1}; training stopped and no update was applied. Best checkpoint: "
        f"{read_pointer(checkpoints).get('best') or 'none yet'} in {checkpoints}",
        hint="lower train.lr, check the data for empty or huge examples, use "
        "train.precision: fp32, or set train.nonfinite: skip to skip such batches",
    )


def _clip(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The gradients' global norm (over all ranks' shards under FSDP), after clipping them
    to ``max_norm``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _min_delta(t: TrainConfig) -> float:
    return t.early_stopping.min_delta if t.early_stopping is not None else 0.0


def _epoch(state: TrainState, batches_in_epoch: int) -> float:
    return round(state.epoch + state.batch_in_epoch / max(batches_in_epoch, 1), 4)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
