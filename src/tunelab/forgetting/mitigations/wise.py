"""WiSE-FT: weight-space ensembling of the start and the fine-tuned weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config.forgetting_section import WiseConfig
from tunelab.models.task_model import TaskModel
from tunelab.training.hooks import Context, Mitigation

__all__ = ["WiSE", "interpolate", "is_lora_a"]

_LORA_A = ("lora_A", "lora_embedding_A")


def is_lora_a(name: str) -> bool:
    """Whether ``name`` is a LoRA down-projection (peft's ``lora_A``/``lora_embedding_A``)."""
    return any(part in _LORA_A for part in name.split("."))


@torch.no_grad()
def interpolate(model: nn.Module, anchor: Mapping[str, torch.Tensor], alpha: float) -> int:
    """θ ← (1 − α)·θ_anchor + α·θ in place, for every parameter named in ``anchor``.

    LoRA ``lora_A`` matrices keep their trained value while ``lora_B`` is interpolated:
    the adapter's delta B·A is linear in B and B starts at 0, so the result is exactly the
    interpolation of the merged weights, W0 + α·B·A. (With a non-zero starting B — an
    adapter trained further — it is not; the full-weight case is always exact.)
    ``torch.lerp`` gives θ_anchor exactly at α = 0 and θ exactly at α = 1.
    Returns how many tensors changed. ``model``'s parameter names must be ``anchor``'s.
    """
    params = dict(model.named_parameters())
    missing = [n for n in anchor if n not in params]
    if missing:
        raise ValueError(f"anchor names not in the model: {missing[:3]}")
    changed = 0
    for name, start in anchor.items():
        if is_lora_a(name):
            continue
        p = params[name]
        p.copy_(torch.lerp(start.to(p.device, p.dtype), p, alpha))
        changed += 1
    return changed


class WiSE(Mitigation):
    """θ = (1 − α)·θ_start + α·θ_trained, applied once in ``finish``; nothing during training.

    Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022. α = 1 keeps the
    fine-tuned model, α = 0 gives back the start exactly; for LoRA see :func:`interpolate`.
    Runs after every other mitigation's ``finish`` (registry order), so SI's importances
    describe the trained weights. Memory: +0 beyond the anchor (4P, owned by the loop).
    """

    name = "wise"

    def __init__(self, options: WiseConfig) -> None:
        self.alpha = options.alpha
        self.anchor: dict[str, torch.Tensor] = {}

    def prepare(self, model: TaskModel, ctx: Context) -> None:
        self.anchor = ctx.anchor

    def finish(self, model: TaskModel, folder: Path) -> dict[str, Any]:
        changed = interpolate(model, self.anchor, self.alpha)
        return {"wise_alpha": self.alpha, "wise_tensors": changed}
