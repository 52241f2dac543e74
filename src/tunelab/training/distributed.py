"""Data-parallel training on Hugging Face Accelerate (torch.distributed underneath).

A process started by ``accelerate launch`` (or ``tunelab train --nproc N``, which runs that
launcher) sees ``WORLD_SIZE`` > 1 in its environment; :func:`current` then creates an
``Accelerator``, which joins the process group (gloo on CPUs, nccl on GPUs) and picks this
rank's device. A plain ``tunelab train`` gets :data:`SINGLE` and never imports Accelerate's
distributed machinery.

What the loop asks of a :class:`Dist`:

- ``wrap(model)``: the module the loop runs forward/backward through (DDP over the
  :class:`~tunelab.models.task_model.TaskModel`, the model sharded in place under FSDP,
  or the model itself on one process); the optimizer is built after it;
- ``no_sync(wrapped)``: gradients of micro-batches other than a step's last stay local;
- ``trainable_state``/``optimizer_state`` and their ``load_*``: full tensors for a
  checkpoint, gathered from the shards under FSDP (``training/sharding.py``);
- ``gathered(model)``: around code that calls the model below its root (generation);
- ``all_sum(values)``: sums of a few floats over ranks (losses, term counts);
- ``gather(obj)``: every rank's object on every rank (RNG states for checkpoints);
- ``barrier()`` and ``main_first()``: rank 0 writes, the others wait and then read.

Only rank 0 writes checkpoints, logs and the model (``is_main``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from tunelab.training import sharding

if TYPE_CHECKING:
    from tunelab.models.task_model import TaskModel

__all__ = ["SINGLE", "Dist", "current", "launched_world_size"]


def launched_world_size() -> int:
    """Processes of the job this process belongs to (1 when not launched distributed)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_world: int = 1
    device: torch.device | None = None  # None: the caller picks (cuda if present, else cpu)
    accelerator: Any = field(default=None, repr=False)
    fsdp: bool = False  # parameters, gradients and optimizer state sharded over the ranks
    launched_fsdp: bool = False  # `accelerate launch --use_fsdp` asked for it

    def using(self, parallel: str) -> Dist:
        """This rank with ``train.parallel`` (``ddp`` or ``fsdp``) applied; a launch with
        ``--use_fsdp`` is FSDP whatever the config says."""
        want = parallel == "fsdp" or self.launched_fsdp
        return self if self.world == 1 or self.fsdp == want else replace(self, fsdp=want)

    @property
    def kind(self) -> str:
        return "fsdp" if self.fsdp else "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        if self.world == 1:
            return None
        return str(torch.distributed.get_backend())

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.accelerator is None:
            return model
        if self.fsdp:
            return sharding.shard(model)
        return self.accelerator.prepare_model(model)

    def no_sync(self, wrapped: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        if self.accelerator is None:
            return contextlib.nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(wrapped)
        return self.accelerator.no_sync(wrapped)

    def trainable_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """The trainable tensors, full (under FSDP every rank calls it; rank 0 gets them)."""
        if self.fsdp:
            return sharding.gather_trainable(model, keep=self.is_main)
        return model.trainable_state()

    def load_trainable(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        if self.fsdp:
            sharding.load_trainable(model, state)
        else:
            model.load_trainable_state(state)

    def optimizer_state(self, model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
        """The optimizer's state for a checkpoint (every rank calls it under FSDP)."""
        return sharding.optimizer_state(model, optimizer) if self.fsdp else optimizer.state_dict()

    def load_optimizer(self, model: torch.nn.Module, optimizer: Any, state: dict) -> None:
        if self.fsdp:
            sharding.load_optimizer_state(model, optimizer, state)
        else:
            optimizer.load_state_dict(state)

    def most_forwards(self, mine: int) -> int:
        """How many forward passes this rank must run when it has ``mine`` of its own:
        under FSDP every forward gathers weights from all ranks, so every rank runs as many
        as the busiest one (a collective); otherwise ``mine``."""
        return max(self.gather(mine)) if self.fsdp else mine

    def gathered(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        return sharding.root_gathered(model) if self.fsdp else contextlib.nullcontext()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group once every rank is here (end of a run)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (prepares data, fills caches); the others after."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def _comm_device(self) -> torch.device:
        return (
            self.device
            if self.device is not None and self.backend == "nccl"
            else torch.device("cpu")
        )


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


SINGLE = Dist()
_current: Dist | None = None


def current() -> Dist:
    """This process's place in the job: :data:`SINGLE`, or a rank of a launched job."""
    global _current
    if launched_world_size() == 1:
        return SINGLE
    if _current is None:
        from accelerate import Accelerator

        # `accelerate launch --use_fsdp` is read as train.parallel: fsdp. tunelab shards with
        # FSDP2 itself (training/sharding.py), so Accelerate is not asked for its FSDP plugin
        # (which it would refuse to build on a CPU)
        launched_fsdp = os.environ.pop("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
        # without cpu=True, Accelerate treats a CPU-only torchrun job as one process
        acc = Accelerator(cpu=not torch.cuda.is_available())
        kind = str(acc.distributed_type).rsplit(".", 1)[-1]
        if kind not in ("MULTI_CPU", "MULTI_GPU"):
            from tunelab.errors import TunelabError

            raise TunelabError(
                f"this launch asks Accelerate for {kind}; tunelab trains with DDP or FSDP",
                hint="launch with `tunelab train CONFIG --nproc N` or `accelerate launch "
                "--multi_gpu --num_processes N -m tunelab train CONFIG`, with "
                "train.parallel: fsdp for FSDP (docs/distributed.md)",
            )
        device = acc.device
        if device.type == "cpu":
            device = torch.device("cpu")  # "cpu:0" compares unequal to the models' "cpu"
        local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        _current = Dist(
            rank=acc.process_index, world=acc.num_processes, local_world=local,
            device=device, accelerator=acc, fsdp=launched_fsdp, launched_fsdp=launched_fsdp,
        )  # fmt: skip
    return _current


def launch_command(nproc: int, args: list[str], *, port: int | None = None) -> list[str]:
    """``accelerate launch`` running ``python -m tunelab <args>`` in ``nproc`` processes on
    this machine: DDP over the GPUs if there are, else over CPU processes (gloo)."""
    import sys

    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port or free_port()),
        "-m", "tunelab", *args,
    ]  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
