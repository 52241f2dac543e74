"""L2-SP: an L2 pull toward the starting weights (Li, Grandvalet & Davoine, 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tunelab.config.forgetting_section import L2spConfig
from tunelab.models.task_model import TaskModel
from tunelab.training.hooks import Context, Mitigation, trainable_params

__all__ = ["L2SP", "weighted_distance"]


class _WeightedSquare(torch.autograd.Function):
    """Σ w (θ − θ*)² of one tensor; backward 2 w (θ − θ*) recomputed from θ itself.

    Plain autograd would keep θ − θ* (and w (θ − θ*)²'s inputs) alive from the penalty's
    forward until its backward: up to 8 bytes per parameter across the whole model. Here
    only references are saved and each gradient exists one tensor at a time.
    """

    @staticmethod
    def forward(
        ctx: Any, p: torch.Tensor, anchor: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(p, anchor, weight)
        sq = (p.detach().float() - anchor.float()).square_()
        return (sq.mul_(weight) if weight is not None else sq).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        p, anchor, weight = ctx.saved_tensors
        g = (p.detach().float() - anchor.float()).mul_(2 * grad)
        if weight is not None:
            g.mul_(weight)
        return g.to(p.dtype), None, None


def weighted_distance(
    params: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Σ_i w_i (θ_i − θ*_i)² over every tensor of ``params`` (w = 1 without ``weights``).

    fp32 whatever the parameters' dtype; differentiable in ``params`` only (gradient
    2 w (θ − θ*), tested against autograd). Exactly 0 when ``params`` equal ``anchor``.
    Shared by L2-SP, EWC (w = Fisher) and SI (w = importance).
    """
    terms = [
        _WeightedSquare.apply(p, anchor[n], None if weights is None else weights[n])
        for n, p in params.items()
    ]
    if not terms:
        raise ValueError("no trainable parameters to penalise")
    return torch.stack(terms).sum()


class L2SP(Mitigation):
    """``strength`` / 2 · Σ_i (θ_i − θ_start,i)² over the trainable parameters.

    Li et al., "Explicit inductive bias for transfer learning with convolutional networks",
    ICML 2018. Unlike weight decay, it pulls toward the pre-trained weights, not toward 0.
    Memory: nothing beyond the anchor (4P bytes for P fp32 trainable parameters, owned
    by the loop and shared by every mitigation).
    """

    name = "l2sp"

    def __init__(self, options: L2spConfig) -> None:
        self.strength = options.strength
        self.anchor: dict[str, torch.Tensor] = {}

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        self.anchor = ctx.anchor

    def penalty(self, model: TaskModel, step: int) -> torch.Tensor:
        return 0.5 * self.strength * weighted_distance(trainable_params(model), self.anchor)
