"""The training loop: one function, read top to bottom.

Everything that happens during training is visible in :func:`fit`: batch order, the
forward/backward of each micro-batch, the forgetting mitigations' penalties, clipping, the
optimizer step, logging, validation, early stopping and checkpoints. Helpers below compute
values; they decide nothing.
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

from tunelab.data.batching import micro_batches, train_batches
from tunelab.data.tokenize import Encoded
from tunelab.errors import TrainingError
from tunelab.models.loss import example_terms
from tunelab.models.nll import loss_pieces, loss_sums
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel
from tunelab.training.checkpoint import (
    TrainState,
    load_checkpoint,
    load_extra_state,
    read_pointer,
    rng_state,
    save_checkpoint,
)
from tunelab.training.distributed import SINGLE, Dist
from tunelab.training.hooks import Context, Mitigation, trainable_params
from tunelab.training.metrics_log import MetricsLog
from tunelab.training.optim import build_optimizer, build_scheduler, warmup_steps
from tunelab.training.sharding import held_mb

__all__ = ["LoopSettings", "fit", "plan_steps"]


@dataclass(frozen=True)
class LoopSettings:
    batch_size: int
    grad_accum: int
    epochs: float
    max_steps: int | None
    lr: float
    schedule: str
    warmup: float
    weight_decay: float
    max_grad_norm: float | None
    precision: str  # resolved: "fp32" | "bf16"
    eval_every: int
    log_every: int
    patience: int | None  # None: no early stopping
    min_delta: float
    seed: int
    keep_checkpoints: int
    pad_id: int
    max_batch_tokens: int | None = None  # split a micro-batch above this padded size
    packing: bool = False  # examples of a micro-batch share rows (no padding)
    row_tokens: int | None = None  # packed row length (the data's max_length)
    length_grouping: int = 4  # batches per length-sorted pool; 1 = random batches
    nonfinite: str = "stop"  # a non-finite loss or gradient: "stop" the run, or "skip" it


def plan_steps(n_train: int, s: LoopSettings, world: int = 1) -> int:
    """Optimizer steps of the whole run (``world`` processes share each step)."""
    if s.max_steps is not None:
        return s.max_steps
    micro_per_epoch = math.ceil(n_train / s.batch_size)
    return max(1, math.ceil(micro_per_epoch * s.epochs / (s.grad_accum * world)))


def fit(
    model: TaskModel,
    train: Sequence[Encoded],
    val: Sequence[Encoded],
    s: LoopSettings,
    *,
    checkpoints: Path,
    config_yaml: str,
    log: MetricsLog,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    mitigations: Sequence[Mitigation] = (),
    ctx: Context | None = None,
    val_metrics: Callable[[TaskModel, int], dict[str, float]] | None = None,
    dist: Dist = SINGLE,
    finished_ok: bool = False,
) -> TrainState:
    """Train ``model`` in place; return the final loop state (best step, why it stopped).

    ``mitigations`` (with their ``ctx``) are the forgetting mitigations; their hooks run at
    the places marked below (see ``forgetting/mitigations/base.py``). ``val_metrics(model,
    step)`` runs at each validation and returns task-metric scalars (``val_accuracy``...)
    logged beside the val loss; it decides itself at which steps it scores.

    ``dist``: this process's rank in a data-parallel job (``training/distributed.py``),
    DDP or FSDP. Every rank runs this function; the ranks agree on every decision because
    each one is taken on values summed over all ranks. Only rank 0 writes (log,
    checkpoints); under FSDP every rank runs every forward (each gathers weights).

    Resuming a run whose last checkpoint is final raises, unless ``finished_ok`` (the
    caller has outputs still to write: a kill after the last checkpoint); the saved state
    is then returned as it is.
    """
    if mitigations:
        assert ctx is not None, "mitigations need a Context"
        # the start point every penalty pulls toward; a resumed run rebuilds the same model
        # from the same seed before restoring, so this is identical on resume
        ctx.anchor = {n: p.detach().clone() for n, p in trainable_params(model).items()}
        for m in mitigations:  # replay mixes general examples into the training list
            train = m.train_examples(list(train), ctx)
    total = plan_steps(len(train), s, dist.world)
    span = s.grad_accum * dist.world  # micro-batches per optimizer step, all ranks together
    # what forward/backward run through: DDP around the model, or the model sharded in
    # place (FSDP: its parameters become this rank's shards, so the optimizer comes after)
    engine = dist.wrap(model)
    device = next(model.parameters()).device  # FSDP puts the shards on the rank's device
    optimizer = build_optimizer(model, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = build_scheduler(
        optimizer, schedule=s.schedule, warmup=warmup_steps(s.warmup, total), total_steps=total
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    lengths = [e.length for e in train]
    terms_of = [example_terms(e, model.head) for e in train]
    state = TrainState(world=dist.world, sharded=dist.fsdp)
    if resume:
        state = _restore(model, optimizer, scheduler, checkpoints, mitigations, dist)
        if state.stopped is not None and not finished_ok:
            raise TrainingError(
                f"the run in {checkpoints.parent} already finished ({state.stopped} at step "
                f"{state.step})",
                hint="start a new run (another `name`) or raise train.epochs / max_steps",
            )
        if dist.is_main:
            log.truncate_after(state.step)
    for m in mitigations:  # after a restore: computes only what the checkpoint lacked
        assert ctx is not None
        m.prepare(model, ctx)
    started = time.perf_counter() - state.elapsed
    model.train()

    while state.step < total and state.stopped is None:
        order = train_batches(
            lengths, s.batch_size, seed=s.seed, epoch=state.epoch, pool=s.length_grouping
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
            local_loss, penalties = _accumulate(
                engine, pieces, dist, s.precision, device,
                penalty=lambda: _penalty(mitigations, model, state.step),
            )  # fmt: skip
            padded = sum(int(b["input_ids"].numel()) for b, w in pieces if w)
            summed, padded_all = dist.all_sum([local_loss, float(padded)])
            state.tokens += sum(lengths[i] for idx in micro for i in idx)
            state.padded_tokens += int(padded_all)
            step_loss = summed / terms
            grad_norm = _clip(trainable, s.max_grad_norm)
            if not math.isfinite(step_loss + sum(penalties.values()) + grad_norm):
                optimizer.zero_grad(set_to_none=True)
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                if s.nonfinite == "stop":
                    raise _nonfinite_error(what, step_loss, grad_norm, state.step, checkpoints)
                state.skipped += 1  # `skip`: this batch updates nothing; training goes on
                if dist.is_main:
                    log.write({"step": state.step + 1, "skipped": state.skipped, "why": what})
            else:
                for m in mitigations:
                    m.before_step(model)
                optimizer.step()
                for m in mitigations:
                    m.after_step(model)
                if state.held_mb is None:  # gradients and optimizer state all exist now
                    state.held_mb = held_mb(model, optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += len(micro)
            state.elapsed = time.perf_counter() - started

            # ---- logging ------------------------------------------------------------
            lr = scheduler.get_last_lr()[0]
            if dist.is_main and (state.step % s.log_every == 0 or state.step == total):
                log.write(
                    {"step": state.step, "epoch": _epoch(state, len(order)), "loss": step_loss,
                     "lr": lr, "grad_norm": grad_norm, "tokens": state.tokens,
                     "elapsed": round(state.elapsed, 2), **penalties}
                )  # fmt: skip
            if progress is not None:
                progress({"step": state.step, "total": total, "loss": step_loss,
                          "val_loss": state.best_val, "elapsed": state.elapsed})  # fmt: skip

            # ---- validation, early stopping, checkpoint ---------------------------------
            if state.step % s.eval_every == 0 or state.step == total:
                val_loss = _val_loss(model, val, s, dist)
                improved = state.best_val is None or val_loss < state.best_val - s.min_delta
                if improved:
                    state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
                else:
                    state.bad_evals += 1
                if s.patience is not None and state.bad_evals >= s.patience:
                    state.stopped = "early_stopping"
                elif state.step == total:
                    state.stopped = "completed"
                scalars: dict[str, float] = {}
                if val_metrics is not None:  # generation metrics: rank 0 (all ranks: FSDP)
                    with dist.gathered(model):
                        scalars = val_metrics(model, state.step)
                    model.train()
                if dist.is_main:
                    log.write({"step": state.step, "val_loss": val_loss,
                               "best_val": state.best_val, **scalars})  # fmt: skip
                    if progress is not None:
                        progress({"step": state.step, "total": total, "val_loss": val_loss})
                _checkpoint(
                    checkpoints, state, model, optimizer, scheduler, mitigations, dist,
                    config_yaml=config_yaml, is_best=improved, keep=s.keep_checkpoints,
                )  # fmt: skip
                if state.stopped is not None:
                    break
        if state.batch_in_epoch >= len(order):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    log.flush()
    return state


def _restore(
    model: TaskModel,
    optimizer,
    scheduler,
    checkpoints: Path,
    mitigations: Sequence[Mitigation],
    dist: Dist,
) -> TrainState:
    pointer = read_pointer(checkpoints)
    if not pointer.get("last"):  # nothing saved yet: start from the beginning
        return TrainState(world=dist.world, sharded=dist.fsdp)
    folder = checkpoints / str(pointer["last"])
    state, trainable, opt = load_checkpoint(
        folder, rank=dist.rank, world=dist.world, sharded=dist.fsdp
    )
    dist.load_trainable(model, trainable)
    dist.load_optimizer(model, optimizer, opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    extra = load_extra_state(folder)
    for m in mitigations:
        prefix = f"{m.name}/"
        m.load_state_dict({k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)})
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

    def split(idx: list[int]) -> list[dict[str, torch.Tensor]]:
        return micro_batches(
            [train[i] for i in idx], s.pad_id, max_tokens=s.max_batch_tokens,
            packing=s.packing, row_tokens=s.row_tokens,
        )  # fmt: skip

    mine = [piece for idx in micro[dist.rank :: dist.world] for piece in split(idx)]
    pieces = [(b, weight) for b in mine] or [(split(micro[0])[0], 0.0)]
    pieces += [(pieces[-1][0], 0.0)] * (dist.most_forwards(len(pieces)) - len(pieces))
    return pieces


def _val_loss(model: TaskModel, val: Sequence[Encoded], s: LoopSettings, dist: Dist) -> float:
    """Mean loss per term over the val examples; each rank scores its share and the sums
    are combined. Under FSDP every rank runs as many forwards (repeats uncounted), and the
    root unit's weights stay gathered through it and are sharded again after (a
    forward-only pass would leave them unsharded)."""
    pieces = loss_pieces(val[dist.rank :: dist.world], s.pad_id, s.batch_size, s.max_batch_tokens)
    mine = len(pieces)
    if missing := dist.most_forwards(mine) - mine:
        pieces += loss_pieces(val[:1], s.pad_id, 1)[:1] * missing
    with dist.gathered(model):
        total, terms = dist.all_sum(list(loss_sums(model, pieces, s.precision, counted=mine)))
    model.train()
    return total / max(terms, 1)


def _checkpoint(
    checkpoints: Path,
    state: TrainState,
    model: TaskModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    mitigations: Sequence[Mitigation],
    dist: Dist,
    **settings: Any,
) -> None:
    """Save the step (rank 0 writes); every rank takes part in gathering the full tensors
    (FSDP) and the RNG states, and waits until the files exist, so a resume always finds
    a checkpoint every rank reached. ``settings``: ``save_checkpoint``'s config_yaml,
    is_best, keep."""
    rngs = dist.gather(rng_state())  # every rank's, so each resumes its own
    trainable = dist.trainable_state(model)
    optimizer_state = dist.optimizer_state(model, optimizer)
    if dist.is_main:
        save_checkpoint(
            checkpoints, state=state, trainable=trainable,
            optimizer={"optimizer": optimizer_state, "scheduler": scheduler.state_dict()},
            extra={f"{m.name}/{k}": v for m in mitigations for k, v in m.state_dict().items()},
            rng=rngs, **settings,
        )  # fmt: skip
    dist.barrier()


def _accumulate(
    engine: torch.nn.Module,
    pieces: list[tuple[dict[str, torch.Tensor], float]],
    dist: Dist,
    precision: str,
    device: torch.device,
    *,
    penalty: Callable[[], tuple[torch.Tensor | float, dict[str, float]]],
) -> tuple[float, dict[str, float]]:
    """Forward and backward of this rank's (piece, weight) pairs of one step: gradients
    accumulate, and are reduced over the ranks in the last backward only, which also
    carries the mitigations' ``penalty()``. Returns the summed loss of the pieces that count
    (weight > 0) and the penalties' values."""
    local_loss, penalties = 0.0, dict[str, float]()
    for k, (batch, w) in enumerate(pieces):
        last = k == len(pieces) - 1
        with contextlib.nullcontext() if last else dist.no_sync(engine):
            with autocast(precision, device):
                loss_sum, _ = engine(_to(batch, device))
            objective = loss_sum * w
            if last:
                extra, penalties = penalty()
                objective = objective + extra if penalties else objective
            objective.backward()
        local_loss += loss_sum.item() if w else 0.0
    return local_loss, penalties


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


def _epoch(state: TrainState, batches_in_epoch: int) -> float:
    return round(state.epoch + state.batch_in_epoch / max(batches_in_epoch, 1), 4)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
