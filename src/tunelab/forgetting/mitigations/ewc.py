"""Elastic weight consolidation (Kirkpatrick et al., 2017)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tunelab.config.forgetting_section import EwcConfig
from tunelab.data.batching import collate
from tunelab.data.tokenize import Encoded
from tunelab.errors import TrainingError
from tunelab.forgetting.mitigations.base import (
    general_pool,
    seeded_stream,
)
from tunelab.forgetting.mitigations.l2sp import weighted_distance
from tunelab.models.loss import lm_nll
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel
from tunelab.training.hooks import Context, Mitigation, trainable_params

__all__ = ["EWC", "diagonal_fisher", "global_mean"]


def diagonal_fisher(
    params: Mapping[str, torch.nn.Parameter], losses: Iterable[Callable[[], torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: F_i = mean over samples x of (∂ℓ(x)/∂θ_i)².

    ``losses``: one callable per sample returning that sample's scalar loss (a fresh forward
    each, so the gradients are per-sample, never of a batch mean). Gradients are taken with
    ``torch.autograd.grad``: the parameters' ``.grad`` are left untouched. A parameter the
    losses do not reach gets F = 0. Returns fp32 tensors shaped like the parameters.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    fisher = {
        n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()
    }
    count = 0
    for loss in losses:
        grads = torch.autograd.grad(loss(), tensors, allow_unused=True)
        for name, g in zip(names, grads, strict=True):
            if g is not None:
                fisher[name].add_(g.detach().float().square())
        count += 1
    if count == 0:
        raise ValueError("the Fisher needs at least one sample")
    for f in fisher.values():
        f.div_(count)
    return fisher


def global_mean(tensors: Mapping[str, torch.Tensor]) -> float:
    """Mean over every entry of every tensor (fp64 accumulation)."""
    total = sum(float(t.double().sum()) for t in tensors.values())
    return total / max(sum(t.numel() for t in tensors.values()), 1)


def _example_loss(model: TaskModel, example: Encoded, ctx: Context) -> torch.Tensor:
    """ℓ(x): mean NLL per response token of one example (a batch of 1)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate([example], ctx.pad_id).items()}
    with autocast(ctx.precision, device):
        loss_sum, terms = lm_nll(model, batch)
    return loss_sum / max(terms, 1)


class EWC(Mitigation):
    """``strength`` / 2 · Σ_i F_i (θ_i − θ_start,i)², F the diagonal empirical Fisher.

    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017.
    F is estimated once, in ``prepare``, at the start weights from ``samples`` general
    examples (the first ``samples`` of a seeded shuffle of ``ctx.general``), one per-example
    gradient each (:func:`diagonal_fisher`; ℓ(x) = the example's mean NLL per response
    token, model in eval mode). With ``normalize``, F is divided by its mean over all
    entries, so ``strength`` reads like an L2-SP strength on an average parameter (the raw
    mean is kept for reports). Cost: ``samples`` forward+backward passes of batch size 1.

    Memory: +4P bytes for the Fisher (P fp32 trainable parameters), plus the anchor (4P,
    owned by the loop). While the Fisher is estimated, one set of gradients (4P) exists at
    a time. For LoRA, P is the adapter size; note that at the start B = 0, so the
    gradient (and Fisher) of every ``lora_A`` is 0: EWC then only constrains ``lora_B``.
    """

    name = "ewc"

    def __init__(self, options: EwcConfig) -> None:
        self.strength = options.strength
        self.samples = options.samples
        self.normalize = options.normalize
        self.fisher: dict[str, torch.Tensor] | None = None
        self.raw_mean = 0.0  # mean of the Fisher before normalisation
        self.used = 0  # examples the Fisher was estimated from
        self.anchor: dict[str, torch.Tensor] = {}

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        self.anchor = ctx.anchor
        params = trainable_params(model)
        if self.fisher is not None:  # restored from a checkpoint
            if set(self.fisher) != set(params):
                raise TrainingError(
                    "the checkpoint's EWC Fisher does not match the model's trainable parameters",
                    hint="resume with the same method settings, or start a new run",
                )
            device = next(iter(params.values())).device
            self.fisher = {n: f.to(device) for n, f in self.fisher.items()}
            return
        pool = general_pool(ctx, self.name)
        idx = seeded_stream(len(pool), min(self.samples, len(pool)), seed=ctx.seed, stream="ewc")
        was_training = model.training
        model.eval()  # no dropout: F is a property of the weights, not of a mask
        try:
            fisher = diagonal_fisher(
                params, (partial(_example_loss, model, pool[i], ctx) for i in idx)
            )
        finally:
            model.train(was_training)
        self.raw_mean = global_mean(fisher)
        if self.normalize and self.raw_mean > 0:
            for f in fisher.values():
                f.div_(self.raw_mean)
        self.fisher, self.used = fisher, len(idx)

    def penalty(self, model: TaskModel, step: int) -> torch.Tensor:
        if self.fisher is None:
            raise RuntimeError("EWC.penalty called before prepare")
        distance = weighted_distance(trainable_params(model), self.anchor, self.fisher)
        return 0.5 * self.strength * distance

    def finish(self, model: TaskModel, folder: Path) -> dict[str, Any]:
        return {"ewc_fisher_mean": self.raw_mean, "ewc_samples": self.used}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.fisher is None:
            return {}
        state = {f"fisher.{n}": f.detach().cpu().contiguous() for n, f in self.fisher.items()}
        state["fisher_mean"] = torch.tensor(self.raw_mean, dtype=torch.float64)
        state["samples"] = torch.tensor(self.used, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        fisher = {
            k.removeprefix("fisher."): v.clone()
            for k, v in state.items()
            if k.startswith("fisher.")
        }
        if not fisher:
            return  # nothing saved: prepare estimates the Fisher
        self.fisher = fisher
        self.raw_mean = float(state["fisher_mean"])
        self.used = int(state["samples"])
