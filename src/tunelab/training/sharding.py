"""Fully sharded data parallel (PyTorch FSDP2, ``torch.distributed.fsdp.fully_shard``).

Under ``train.parallel: fsdp`` each of N processes keeps 1/N of every parameter, gradient
and optimizer state; a decoder layer's full weights exist only while that layer runs
(gathered before its forward and backward, freed after). The model is sharded in two
levels: every decoder layer (the classes the transformers model lists as
``_no_split_modules``) is one unit, and the root (the :class:`TaskModel`: embeddings, final
norm, LM head, classifier head) is another.

What changes for the loop, all behind :class:`~tunelab.training.distributed.Dist`:

- the optimizer is built after sharding (its parameters are the sharded ones);
- gradients of micro-batches other than a step's last are not reduced
  (``set_requires_gradient_sync``);
- checkpoints hold the full (unsharded) trainable tensors and optimizer state, gathered to
  rank 0, which writes them: a checkpoint is the same files as a one-process run's;
- code that calls into the model below its root (generation during validation) runs inside
  :func:`root_gathered`, and on every rank (each layer's gather is a collective).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from tunelab.models.task_model import TaskModel

__all__ = [
    "gather_trainable",
    "held_mb",
    "load_optimizer_state",
    "load_trainable",
    "optimizer_state",
    "root_gathered",
    "shard",
]


def shard(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place (its decoder layers, then the root); return it."""
    from torch.distributed.fsdp import fully_shard

    names = set(_layer_classes(model))
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in names:
            fully_shard(module)
    fully_shard(model)
    return model


def _layer_classes(model: nn.Module) -> list[str]:
    """Class names of the transformer blocks (what transformers will not split)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def gather_trainable(model: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Full tensors of the trainable parameters, on the CPU, for the rank that ``keep``s
    them (a collective: every rank calls it; the others get ``{}``)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if isinstance(p, DTensor) else p  # one tensor at a time
            if keep:
                out[name] = full.detach().cpu()
    return out


def held_mb(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """MiB of parameters, gradients and optimizer state this process holds: its shards
    under FSDP, everything otherwise."""

    def size(t: Any) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    params = list(model.parameters())
    total = sum(size(p) + size(p.grad) for p in params)
    total += sum(size(v) for st in optimizer.state.values() for v in st.values())
    return round(total / 2**20, 3)


def load_trainable(model: TaskModel, state: dict[str, torch.Tensor]) -> None:
    """Copy full trainable tensors into the sharded parameters (each rank keeps its part)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.check_trainable_state(state)
    full: dict[str, Any] = dict(state)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name (a collective; rank 0 gets it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )


@contextlib.contextmanager
def root_gathered(model: nn.Module) -> Iterator[None]:
    """The root unit's full weights (embeddings, LM head, norm) for code that calls the model
    below its root, as generation does; the layers gather themselves as they run."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
