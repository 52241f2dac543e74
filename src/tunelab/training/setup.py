"""Everything built before the first optimizer step, then the loop: :func:`train`.

``train`` plans the steps, wraps the model for data parallelism (DDP, or FSDP sharding in
place: the optimizer comes after), builds the optimizer and the learning-rate schedule,
lets the forgetting mitigations rewrite the training list (replay mixes general examples
in), restores the last checkpoint on resume, prepares the mitigations and the objective,
and hands all of it to :func:`tunelab.training.loop.fit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from tunelab.data.tokenize import Encoded
from tunelab.errors import TrainingError
from tunelab.models.task_model import TaskModel
from tunelab.training.checkpoint import (
    TrainState,
    load_checkpoint,
    load_extra_state,
    read_pointer,
)
from tunelab.training.distributed import SINGLE, Dist
from tunelab.training.hooks import Context, Mitigation, trainable_params
from tunelab.training.loop import LoopSettings, Parts, Progress, fit
from tunelab.training.metrics_log import MetricsLog
from tunelab.training.objectives import Objective, for_head
from tunelab.training.optim import build_optimizer, build_scheduler, warmup_steps

__all__ = ["LoopSettings", "plan_steps", "train"]


def plan_steps(n_train: int, s: LoopSettings, world: int = 1) -> int:
    """Optimizer steps of the whole run (``world`` processes share each step)."""
    t = s.train
    if t.max_steps is not None:
        return t.max_steps
    micro_per_epoch = math.ceil(n_train / t.batch_size)
    return max(1, math.ceil(micro_per_epoch * t.epochs / (t.grad_accum * world)))


def train(
    model: TaskModel,
    train: Sequence[Encoded],
    val: Sequence[Encoded],
    s: LoopSettings,
    *,
    checkpoints: Path,
    config_yaml: str,
    log: MetricsLog,
    objective: Objective | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    mitigations: Sequence[Mitigation] = (),
    ctx: Context | None = None,
    val_metrics: Callable[[TaskModel, int], dict[str, float]] | None = None,
    dist: Dist = SINGLE,
    finished_ok: bool = False,
) -> TrainState:
    """Train ``model`` in place; return the final loop state (best step, why it stopped).

    ``objective``: what is minimised (``training/objectives/``); default the one of the
    model's head (``lm`` or ``classifier``). ``mitigations`` (with their ``ctx``) are the
    forgetting mitigations; their hooks run where ``training/hooks.py`` says.
    ``val_metrics(model, step)`` runs at each validation and returns task-metric scalars
    (``val_accuracy``...) logged beside the val loss; it decides itself at which steps.

    ``dist``: this process's rank in a data-parallel job (``training/distributed.py``),
    DDP or FSDP. Every rank runs this function; only rank 0 writes.

    Resuming a run whose last checkpoint is final raises, unless ``finished_ok`` (the
    caller has outputs still to write: a kill after the last checkpoint); the saved state
    is then returned as it is.
    """
    objective = objective if objective is not None else for_head(model.head)
    if mitigations:
        assert ctx is not None, "mitigations need a Context"
        # the start point every penalty pulls toward; a resumed run rebuilds the same model
        # from the same seed before restoring, so this is identical on resume
        ctx.anchor = {n: p.detach().clone() for n, p in trainable_params(model).items()}
        for m in mitigations:  # replay mixes general examples into the training list
            train = m.train_examples(list(train), ctx)
    _check_fields(objective, train, s)
    total = plan_steps(len(train), s, dist.world)
    # what forward/backward run through: DDP around the model, or the model sharded in
    # place (FSDP: its parameters become this rank's shards, so the optimizer comes after)
    engine = dist.wrap(model)
    t = s.train
    optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = build_scheduler(
        optimizer, schedule=t.schedule, warmup=warmup_steps(t.warmup, total), total_steps=total
    )
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
    objective.prepare(model, train)
    parts = Parts(
        model=model, engine=engine, objective=objective, optimizer=optimizer,
        scheduler=scheduler, mitigations=mitigations, dist=dist, checkpoints=checkpoints,
        config_yaml=config_yaml, log=log, progress=progress, val_metrics=val_metrics,
    )  # fmt: skip
    return fit(parts, train, val, s, state, total)


def _check_fields(objective: Objective, train: Sequence[Encoded], s: LoopSettings) -> None:
    """Every training example carries the fields the objective reads; packing collates
    rows of several examples, which carry no per-example fields."""
    if not objective.fields:
        return
    if s.train.packing:
        raise TrainingError(
            f"the {objective.name!r} objective reads per-example fields "
            f"{list(objective.fields)}, which packed rows do not carry",
            hint="set train.packing: false",
        )
    lacking = [i for i, e in enumerate(train) if any(f not in e.extras for f in objective.fields)]
    if lacking:
        raise TrainingError(
            f"{len(lacking)} training examples (e.g. #{lacking[0]}) lack the fields "
            f"{list(objective.fields)} that the {objective.name!r} objective reads",
            hint="build the training list with those Encoded.extras (the recipe of the verb)",
        )


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
