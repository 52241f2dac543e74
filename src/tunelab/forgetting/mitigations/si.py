"""Synaptic intelligence (Zenke, Poole & Ganguli, 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunelab.config.forgetting_section import SiConfig
from tunelab.data.batching import collate
from tunelab.errors import ConfigError, TrainingError
from tunelab.forgetting.mitigations.base import (
    general_pool,
    seeded_stream,
)
from tunelab.forgetting.mitigations.ewc import global_mean
from tunelab.forgetting.mitigations.l2sp import weighted_distance
from tunelab.models.loss import lm_nll
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel
from tunelab.training.hooks import Context, Mitigation, trainable_params

__all__ = ["IMPORTANCE_FILE", "SI", "PathIntegral", "path_importance"]

IMPORTANCE_FILE = "si_importance.safetensors"


class PathIntegral:
    """ω_i = −Σ_t g_i(t) · Δθ_i(t) along an optimizer's path (Zenke et al. 2017, eq. 3).

    ``before(params)`` at each step's final gradients, ``after(params)`` right after the
    optimizer updated the parameters: g is the gradient the optimizer applied (read from
    ``.grad`` in ``after``, where it is still the same tensor) and Δθ the update it made.
    Works on any ``name → parameter`` mapping. Parameters without a gradient at ``before``
    are skipped for that step (an optimizer leaves them alone). Memory: ω and one snapshot
    of the parameters, both fp32.
    """

    def __init__(self, params: Mapping[str, torch.Tensor]) -> None:
        self.omega = {
            n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()
        }
        self._start = {n: torch.empty_like(w) for n, w in self.omega.items()}
        self._stepping: list[str] | None = None

    def before(self, params: Mapping[str, torch.Tensor]) -> None:
        self._stepping = [n for n, p in params.items() if p.grad is not None]
        for n in self._stepping:
            self._start[n].copy_(params[n].detach())

    def after(self, params: Mapping[str, torch.Tensor]) -> None:
        if self._stepping is None:
            raise RuntimeError("PathIntegral.after without a matching before")
        for n in self._stepping:
            p = params[n]
            if p.grad is None:
                raise TrainingError(
                    f"SI: the gradient of {n} was cleared between before_step and after_step",
                    hint="call after_step right after optimizer.step(), before zero_grad",
                )
            # ω −= g · (θ_after − θ_before), in place on the snapshot: (θ_before − θ_after)·g
            self.omega[n].add_(self._start[n].sub_(p.detach()).mul_(p.grad.detach()))
        self._stepping = None


def path_importance(
    omega: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    damping: float,
) -> dict[str, torch.Tensor]:
    """Ω_i = ω_i / ((θ_i,end − θ_i,start)² + ξ), ξ = ``damping`` (Zenke et al. 2017, eq. 5).

    fp32, shaped like ω. Not clipped: ω (and so Ω) may be negative where the optimizer
    moved a parameter against its gradient (momentum); the :class:`SI` class clips at 0.
    """
    return {
        n: w / ((end[n].detach().float() - start[n].float()).square() + damping)
        for n, w in omega.items()
    }


class SI(Mitigation):
    """``strength`` · Σ_i Ω_i (θ_i − θ_start,i)², Ω the path-integral importance.

    Zenke et al., "Continual learning through synaptic intelligence", ICML 2017. Ω of a
    path is ω / (Δ² + ξ) (:func:`path_importance`); ω is accumulated by
    :class:`PathIntegral`. A first round has no earlier path for the base model's
    abilities, so on a fresh start ``prepare`` walks a short consolidation path on general
    data (``general_steps`` Adam steps at ``ctx.lr``, a fresh optimizer, seeded batches of
    ``ctx.batch_size``, eval mode so no dropout or RNG is consumed), takes its Ω, and puts
    the parameters back to ``ctx.anchor`` exactly. With ``previous`` (a folder holding an
    earlier round's ``si_importance.safetensors``), that round's Ω is added for parameters
    of the same name and shape. The prior Ω is clipped at 0 and, with ``normalize``,
    divided by its mean. During training ω keeps accumulating along the task path;
    ``finish`` writes prior Ω + this round's task-path Ω (relative to this round's start,
    at the final weights) to ``folder/si_importance.safetensors`` for the next round.

    Memory: +12P bytes for P fp32 trainable parameters (ω of the task path, the prior Ω,
    and a parameter snapshot taken at every ``before_step``), plus the anchor (4P, owned
    by the loop). While the consolidation path in ``prepare`` runs, the peak is +20P
    (the prior Ω, the path's ω and snapshot, Adam's two moments); all but the prior are
    freed when it ends. Compute: ``general_steps`` forward+backward passes of a batch.
    """

    name = "si"

    def __init__(self, options: SiConfig) -> None:
        self.strength = options.strength
        self.damping = options.damping
        self.general_steps = options.general_steps
        self.normalize = options.normalize
        self.previous = options.previous
        self.prior: dict[str, torch.Tensor] | None = None  # penalty weights (normalised Ω)
        self.prior_scale = 1.0  # prior Ω = prior * prior_scale
        self.matched = 0  # tensors of `previous` used
        self.path: PathIntegral | None = None
        self._omega: dict[str, torch.Tensor] | None = None  # restored task-path ω
        self.anchor: dict[str, torch.Tensor] = {}

    # ---- hooks ------------------------------------------------------------------------

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        self.anchor = ctx.anchor
        params = trainable_params(model)
        device = next(iter(params.values())).device
        if self.prior is not None:  # restored from a checkpoint
            if self._omega is None or set(self.prior) != set(params):
                raise TrainingError(
                    "the checkpoint's SI state does not match the model's trainable parameters",
                    hint="resume with the same method settings, or start a new run",
                )
            self.prior = {n: t.to(device) for n, t in self.prior.items()}
            self.path = PathIntegral(params)
            for n, w in self._omega.items():
                self.path.omega[n].copy_(w)
            self._omega = None
            return
        prior = {
            n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()
        }
        if self.general_steps > 0:
            self._consolidation_path(model, ctx, params, into=prior)
        if self.previous is not None:
            self.matched = _add_previous(prior, Path(self.previous))
        for t in prior.values():
            t.clamp_(min=0)
        mean = global_mean(prior)
        self.prior_scale = mean if self.normalize and mean > 0 else 1.0
        for t in prior.values():
            t.div_(self.prior_scale)
        self.prior = prior
        self.path = PathIntegral(params)  # the task path starts here, after the consolidation

    def penalty(self, model: TaskModel, step: int) -> torch.Tensor:
        if self.prior is None:
            raise RuntimeError("SI.penalty called before prepare")
        return self.strength * weighted_distance(trainable_params(model), self.anchor, self.prior)

    def before_step(self, model: TaskModel) -> None:
        if self.path is None:
            raise RuntimeError("SI.before_step called before prepare")
        self.path.before(trainable_params(model))

    def after_step(self, model: TaskModel) -> None:
        if self.path is None:
            raise RuntimeError("SI.after_step called before prepare")
        self.path.after(trainable_params(model))

    def finish(self, model: TaskModel, folder: Path) -> dict[str, Any]:
        """Write prior Ω + this round's task-path Ω, both unnormalised, for the next round."""
        if self.prior is None or self.path is None:
            raise RuntimeError("SI.finish called before prepare")
        params = trainable_params(model)
        out: dict[str, torch.Tensor] = {}
        for n, w in self.path.omega.items():
            task = path_importance({n: w}, self.anchor, params, self.damping)[n].clamp_(min=0)
            out[n] = task.add_(self.prior[n], alpha=self.prior_scale).cpu().contiguous()
        folder.mkdir(parents=True, exist_ok=True)
        save_file(out, folder / IMPORTANCE_FILE)
        return {
            "si_matched_previous": self.matched,
            "si_general_steps": self.general_steps,
            "si_importance_mean": global_mean(out),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.prior is None or self.path is None:
            return {}
        state = {f"omega.{n}": w.detach().cpu().contiguous() for n, w in self.path.omega.items()}
        state.update({f"prior.{n}": w.detach().cpu().contiguous() for n, w in self.prior.items()})
        state["prior_scale"] = torch.tensor(self.prior_scale, dtype=torch.float64)
        state["matched_previous"] = torch.tensor(self.matched, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prior = {
            k.removeprefix("prior."): v.clone() for k, v in state.items() if k.startswith("prior.")
        }
        if not prior:
            return  # nothing saved: prepare computes the prior
        self.prior = prior
        self._omega = {
            k.removeprefix("omega."): v.clone() for k, v in state.items() if k.startswith("omega.")
        }
        self.prior_scale = float(state["prior_scale"])
        self.matched = int(state["matched_previous"])

    # ---- helpers ----------------------------------------------------------------------

    def _consolidation_path(
        self,
        model: TaskModel,
        ctx: Context,
        params: dict[str, torch.nn.Parameter],
        into: dict[str, torch.Tensor],
    ) -> None:
        """Add Ω of ``general_steps`` Adam steps on general data to ``into``.

        The parameters end exactly at ``ctx.anchor`` and their ``.grad`` as they were.
        """
        moved = [n for n, p in params.items() if not torch.equal(p.detach(), ctx.anchor[n])]
        if moved:
            raise TrainingError(
                f"SI: the model is not at its starting weights ({moved[0]} differs), so no "
                "consolidation path can start there (a resumed run without SI state?)",
                hint="resume from a checkpoint written with si enabled, or start a new run",
            )
        pool = general_pool(ctx, self.name)
        device = next(iter(params.values())).device
        path = PathIntegral(params)
        optimizer = torch.optim.Adam(list(params.values()), lr=ctx.lr)
        grads = {n: p.grad for n, p in params.items()}
        was_training = model.training
        model.eval()
        try:
            for k in range(self.general_steps):
                idx = seeded_stream(len(pool), ctx.batch_size, seed=ctx.seed, stream="si",
                                    start=k * ctx.batch_size)  # fmt: skip
                batch = {
                    n: t.to(device) for n, t in collate([pool[i] for i in idx], ctx.pad_id).items()
                }
                optimizer.zero_grad(set_to_none=True)
                with autocast(ctx.precision, device):
                    loss_sum, terms = lm_nll(model, batch)
                (loss_sum / max(terms, 1)).backward()
                path.before(params)
                optimizer.step()
                path.after(params)
            for n, w in path.omega.items():
                into[n].add_(path_importance({n: w}, ctx.anchor, params, self.damping)[n])
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(ctx.anchor[n])
                    p.grad = grads[n]
            model.train(was_training)


def _add_previous(prior: dict[str, torch.Tensor], folder: Path) -> int:
    """Add an earlier round's Ω where name and shape match; how many tensors matched."""
    path = folder / IMPORTANCE_FILE
    if not path.is_file():
        raise ConfigError(
            f"forgetting.mitigations.si.previous: {path} does not exist",
            hint="point `previous` at the output folder of an earlier run trained with si",
        )
    matched = 0
    for name, value in load_file(path).items():
        if name in prior and prior[name].shape == value.shape:
            prior[name].add_(value.to(prior[name].device, torch.float32))
            matched += 1
    return matched
