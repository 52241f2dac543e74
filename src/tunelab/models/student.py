"""A smaller student for distillation: cut from the teacher, or checked against it.

:func:`shallow_student` copies the teacher's architecture with fewer decoder layers,
initialised from the kept layers of the teacher with its LoRA adapters merged
(:func:`merged_lm`); :func:`student_layers` picks evenly spaced layers, the first and the
last included. :func:`check_vocab` accepts another model as a student only if it has
exactly the teacher's tokenizer. :func:`mean_kl` measures how far a student is.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tunelab.data.batching import collate, eval_batches
from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import ConfigError, ModelError
from tunelab.models.loss import chunked_kl, example_terms
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel

__all__ = ["check_vocab", "mean_kl", "merged_lm", "shallow_student", "student_layers"]


def merged_lm(lm: Any) -> Any:
    """``lm`` itself, or for a PEFT model a merged copy (adapters folded into the weights;
    the argument is left untouched)."""
    from peft import PeftModel

    if isinstance(lm, PeftModel):
        return copy.deepcopy(lm).merge_and_unload()
    return lm


def student_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """The teacher layer indices a shallow student keeps.

    An int k: k evenly spaced indices round(i · (n − 1) / (k − 1)), i = 0..k−1, so the first
    and the last layer are kept (the last layer's output is what the final norm and the LM
    head were trained on: cutting it cost the most in docs/distill.md). None: k = ⌈n / 2⌉.
    A list: strictly increasing indices in [0, n). Raises ConfigError naming ``distill.layers``.
    """
    if layers is None:
        layers = (n_layers + 1) // 2
    if isinstance(layers, int):
        if not 1 <= layers <= n_layers:
            raise ConfigError(
                f"distill.layers {layers} does not fit a teacher of {n_layers} layers",
                hint=f"use 1..{n_layers} (fewer than {n_layers} to make the student smaller)",
            )
        if layers == 1:
            return [n_layers - 1]
        return sorted({round(i * (n_layers - 1) / (layers - 1)) for i in range(layers)})
    kept = list(layers)
    bad = [i for i in kept if not 0 <= i < n_layers]
    if not kept or bad or any(b <= a for a, b in itertools.pairwise(kept)):
        raise ConfigError(
            f"distill.layers {kept!r} does not fit a teacher of {n_layers} layers",
            hint=f"strictly increasing layer indices in 0..{n_layers - 1}, or a layer count",
        )
    return kept


def shallow_student(teacher_lm: Any, kept: Sequence[int]) -> Any:
    """A copy of the teacher's architecture with only the ``kept`` decoder layers.

    The student is built fresh from the teacher's config with ``num_hidden_layers =
    len(kept)`` (and every per-layer list of the config, such as ``layer_types``, cut to
    the kept layers), so its layers carry ``layer_idx`` 0..len(kept)-1 as the KV cache
    expects. Student layer j then receives teacher layer ``kept[j]``'s weights; the
    embeddings, the final norm and the LM head are copied as they are. A PEFT teacher is
    merged (on a copy) first, so the student starts from the fine-tuned weights.
    """
    teacher = merged_lm(teacher_lm)
    n = int(teacher.config.num_hidden_layers)
    kept = student_layers(list(kept), n)
    prefix = _layers_prefix(teacher, n)
    values = teacher.config.to_dict()
    values["num_hidden_layers"] = len(kept)
    for key, value in list(values.items()):
        if "layer" in key and isinstance(value, list) and len(value) == n:
            values[key] = [value[i] for i in kept]  # layer_types, no_rope_layers, ...
    config = type(teacher.config).from_dict(values)
    config._attn_implementation = teacher.config._attn_implementation
    student = type(teacher)(config)  # random weights, all overwritten below
    source = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            name_in_teacher = f"{prefix}{kept[int(index)]}.{rest}"
        else:
            name_in_teacher = name
        state[name] = source[name_in_teacher]
    student.load_state_dict(state, strict=True)
    student.to(next(teacher.parameters()).device)
    return student.eval()


def _layers_prefix(lm: nn.Module, n: int) -> str:
    """``model.layers.`` for Llama-family models: the ModuleList holding the n decoder blocks."""
    lists = [name for name, m in lm.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise ModelError(
            f"cannot find the decoder layers of {type(lm).__name__} "
            f"({len(lists)} module lists of {n} layers)",
            hint="set distill.student to a smaller model of the same tokenizer instead",
        )
    return f"{lists[0]}."


def check_vocab(teacher_tok: Any, student_tok: Any, teacher_lm: Any, student_lm: Any) -> None:
    """Raise ConfigError unless both tokenizers map the same tokens to the same ids and both
    LM heads produce the same number of logits (KL compares them position by position)."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        differ = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ConfigError(
            f"distill.student: the student's tokenizer differs from the teacher's "
            f"({len(s_vocab)} vs {len(t_vocab)} tokens; e.g. {differ})",
            hint="distil into a model of the same family (same tokenizer), or cut layers "
            "from the teacher with distill.layers",
        )
    t_rows = teacher_lm.get_output_embeddings().weight.shape[0]
    s_rows = student_lm.get_output_embeddings().weight.shape[0]
    if t_rows != s_rows:
        raise ConfigError(
            f"distill.student: the student's LM head has {s_rows} outputs, the teacher's {t_rows}",
            hint="distil into a model with the same vocabulary size, or use distill.layers",
        )


@torch.no_grad()
def mean_kl(
    student: Any,
    teacher: Any,
    items: Sequence[Encoded],
    *,
    pad_id: int,
    batch_size: int = 16,
    precision: str = "fp32",
    temperature: float = 1.0,
) -> float:
    """Mean over the response positions of ``items`` of KL(p_teacher ‖ p_student), nats."""
    s_model, t_model = TaskModel(student, "lm"), TaskModel(teacher, "lm")
    was = student.training, teacher.training
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    total = 0.0
    for idx in eval_batches([e.length for e in items], batch_size):
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad_id).items()}
        selected = batch["labels"][:, 1:] != IGNORE  # (B, T-1): token t+1 is predicted at t
        with autocast(precision, device):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            h_s = s_model.hidden(ids, mask)[:, :-1][selected]  # (N, H)
            h_t = t_model.hidden(ids, mask)[:, :-1][selected]  # (N, H)
            total += float(chunked_kl(s_model.lm_head, t_model.lm_head, h_s, h_t, temperature))
    student.train(was[0])
    teacher.train(was[1])
    return total / max(sum(example_terms(e, "lm") for e in items), 1)
