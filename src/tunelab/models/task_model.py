"""The model being trained: a causal LM (optionally with LoRA adapters) and its head.

``head="lm"``: the model answers with label words / responses through its LM head.
``head="classifier"``: a linear layer over the labels replaces the LM head; it reads the
hidden state of the last prompt token. Its rows start as the LM head's rows of each label
word's first token, so before training it predicts exactly what LM label scoring
restricted to the labels predicts (a zero-shot start instead of a random one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tunelab.errors import ConfigError
from tunelab.models.loss import batch_loss

__all__ = ["TaskModel", "build_task_model"]

Head = Literal["lm", "classifier"]
Kind = Literal["lora", "full", "frozen"]


class TaskModel(nn.Module):
    lm: Any  # a transformers PreTrainedModel or a peft PeftModel wrapping one

    def __init__(self, lm: nn.Module, head: Head, classifier: nn.Linear | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.head = head
        self.classifier = classifier

    @property
    def decoder(self) -> nn.Module:
        """The transformer body (embeddings → blocks → final norm), adapters included."""
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return base.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return base.get_output_embeddings()

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Final hidden states, (B, T, H). Never computes vocabulary logits.

        ``cache``: a KV cache of tokens that precede ``input_ids`` (then ``attention_mask``
        covers cached + new tokens, (B, P + T)).
        """
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def prefix_cache(self, prefix: list[int]) -> Any:
        """KV cache of one token sequence, (1, P), for prompts that all start with it."""
        ids = torch.tensor([prefix], device=next(self.parameters()).device)
        return self.decoder(input_ids=ids, use_cache=True).cache

    def forward(
        self, batch: dict[str, torch.Tensor], loss: Callable[..., Any] | None = None
    ) -> Any:
        """``loss(self, batch)``: what a training objective computes from one batch
        (``training/objectives/``); without ``loss``, the summed head loss and its term
        count (:func:`~tunelab.models.loss.batch_loss`).

        Training calls the model this way so that a data-parallel wrapper (DDP, FSDP)
        around it sees the whole graph of the step, whatever the objective computes.
        """
        if loss is not None:
            return loss(self, batch)
        return batch_loss(self, batch)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only the parameters that training changes (adapters, head, or everything)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def check_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raise unless ``state`` names exactly the trainable parameters (and no others)."""
        params = dict(self.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        unknown = [n for n in state if n not in params]
        if missing or unknown:
            raise ValueError(
                f"trainable state mismatch: missing={missing[:3]} unknown={unknown[:3]}"
            )

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.check_trainable_state(state)
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)


def build_task_model(
    lm: Any,
    *,
    kind: Kind,
    head: Head,
    label_token_ids: Sequence[int] | None = None,
    lora_r: int = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.05,
    lora_targets: str | list[str] = "all-linear",
    lora_layers: int | list[int] | None = None,
) -> TaskModel:
    """Freeze/adapt ``lm`` for ``kind`` and attach ``head``.

    ``label_token_ids`` (the first token of each label word) initialises a classifier head.
    """
    classifier = None
    if head == "classifier":
        if not label_token_ids:
            raise ConfigError(
                "method.head 'classifier' needs classification data with labels",
                hint="use data with a label column, or method.head: lm",
            )
        weight = lm.get_output_embeddings().weight  # (V, H)
        classifier = nn.Linear(weight.shape[1], len(label_token_ids), bias=True)
        with torch.no_grad():
            classifier.weight.copy_(weight[list(label_token_ids)])
            classifier.bias.zero_()
    if kind == "lora":
        for p in lm.parameters():
            p.requires_grad_(False)
        targets: Any = lora_targets
        layers = _layer_indices(lm, lora_layers)
        if layers is not None and targets == "all-linear":
            targets = _linear_names(lm)  # peft takes layer indices only with a list of names
        peft_config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,  # type: ignore[arg-type]  # peft accepts floats
            lora_dropout=lora_dropout,
            target_modules=targets,
            layers_to_transform=layers,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            lm = get_peft_model(lm, peft_config)
        except ValueError as exc:
            raise ConfigError(
                f"method.lora.targets {lora_targets!r}: {exc}",
                hint="use `all-linear` or module names such as [q_proj, v_proj]",
            ) from exc
        _use_mask_dropout(lm)
    elif kind == "frozen":
        for p in lm.parameters():
            p.requires_grad_(False)
    else:  # full
        for p in lm.parameters():
            p.requires_grad_(True)
    if classifier is not None:
        for p in classifier.parameters():
            p.requires_grad_(True)
    return TaskModel(lm, head, classifier)


class MaskDropout(nn.Module):
    """Inverted dropout, the distribution of ``nn.Dropout``, several times faster on CPU.

    ``torch.nn.Dropout`` on CPU draws its mask with ``bernoulli_`` and spent 16% of a LoRA
    training step here (4 adapters x 30 layers per micro-batch); a uniform draw compared
    with ``p`` gives the same Bernoulli(1 - p) keep mask at a quarter of the cost (measured
    in docs/performance.md). Eval mode and ``p == 0`` pass the input through untouched.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).uniform_() >= self.p
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _use_mask_dropout(lm: nn.Module) -> None:
    """Swap peft's LoRA input dropouts for :class:`MaskDropout` (same p)."""
    for module in list(lm.modules()):
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, drop in list(dropouts.items()):
                if isinstance(drop, nn.Dropout):
                    dropouts[name] = MaskDropout(drop.p)


def _layer_indices(lm: Any, layers: int | list[int] | None) -> list[int] | None:
    if layers is None:
        return None
    total = int(lm.config.num_hidden_layers)
    if isinstance(layers, int):
        chosen = list(range(total - layers, total)) if 1 <= layers <= total else []
    else:
        chosen = layers
    bad = [i for i in chosen if not 0 <= i < total]
    if bad or not chosen:
        raise ConfigError(
            f"method.lora.layers {layers!r} does not fit a model of {total} layers",
            hint=f"use an int 1..{total} (top layers) or indices 0..{total - 1}",
        )
    return chosen


def _linear_names(lm: Any) -> list[str]:
    """Last name component of every linear layer but the output head (peft's all-linear)."""
    head = lm.get_output_embeddings()
    return sorted(
        {
            n.split(".")[-1]
            for n, m in lm.named_modules()
            if isinstance(m, nn.Linear) and m is not head
        }
    )
