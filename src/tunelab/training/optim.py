"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler

__all__ = ["build_optimizer", "build_scheduler", "warmup_steps"]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norm weights (1-D tensors) get no decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` < 1 is a fraction of ``total_steps``; otherwise a step count."""
    return round(warmup * total_steps) if warmup < 1 else int(warmup)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[schedule]
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1)
    )
