"""Distillation: train a smaller student from a fine-tuned teacher (``tunelab distill``).

The student is either a *shallow copy* of the teacher — the same architecture with fewer
decoder layers, initialised from the teacher's kept layers (:func:`shallow_student`) — or
any smaller model with exactly the teacher's tokenizer (:func:`check_vocab`).

Training (:func:`train_student`) minimises, over the response tokens of each batch,

    L = α · τ² · mean KL(softmax(z_t / τ) ‖ softmax(z_s / τ)) + (1 − α) · mean CE(z_s, y)

(Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015; τ² keeps
the soft-target gradients on the scale of the hard-target ones), on the task's train split
mixed with general chat/prose data from the retention suite's *train* part (a share
``general`` of every batch). Full fine-tuning of the student with AdamW and a cosine
schedule for a fixed number of steps; the teacher is frozen in eval mode and its logits
are computed per batch, only at response positions, a chunk of positions at a time.

:func:`tunelab.recipes.distill.distill_stage` runs the whole job from a config and
writes the student and the teacher-vs-student comparison.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from tunelab.config import Config
from tunelab.data.batching import collate, eval_batches, micro_batches
from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import ConfigError, ModelError, TrainingError
from tunelab.forgetting.mitigations.base import seeded_stream
from tunelab.forgetting.mitigations.kd import chunked_kl
from tunelab.models.loss import chunked_cross_entropy, example_terms
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel
from tunelab.training.optim import build_optimizer, build_scheduler, warmup_steps

__all__ = [
    "DistillSettings",
    "Keep",
    "Progress",
    "check_vocab",
    "distill_settings",
    "distill_terms",
    "mean_kl",
    "merged_lm",
    "mixed_batch",
    "resolve_keep",
    "shallow_student",
    "train_student",
]

Keep = list[int] | Literal["every-other"]
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class DistillSettings:
    """How the student is trained. CLI options override the first six; the rest come from
    the config's ``train`` section (:func:`distill_settings`)."""

    steps: int = 200  # optimizer steps
    batch_size: int = 8  # examples per step (task + general)
    lr: float = 5e-4  # peak AdamW learning rate (full fine-tuning; docs/distill.md)
    alpha: float = 0.5  # weight of the KL term; 1 - alpha weighs the cross-entropy
    temperature: float = 2.0  # τ of the soft targets
    general: float = 0.2  # share of each batch drawn from general data
    warmup: float = 0.1  # fraction of steps (< 1) or a step count
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    precision: str = "fp32"  # resolved: fp32 | bf16
    log_every: int = 10
    max_batch_tokens: int | None = None  # split a step's batch above this padded size


KNOBS = ("steps", "batch_size", "lr", "alpha", "temperature", "general")


def distill_settings(
    cfg: Config, precision: str, overrides: Mapping[str, Any] | None = None
) -> DistillSettings:
    """Defaults, the config's train section (schedule details, seed) and the CLI's knobs."""
    t = cfg.train
    s = DistillSettings(
        warmup=t.warmup, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        seed=t.seed, precision=precision, log_every=t.log_every,
        max_batch_tokens=t.max_batch_tokens,
    )  # fmt: skip
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(KNOBS))
    if unknown:
        raise ConfigError(f"unknown distillation options {unknown}", hint=f"use {list(KNOBS)}")
    s = replace(s, **given)
    problems = [
        (name, message)
        for name, bad, message in [
            ("steps", s.steps < 1, f"must be >= 1, got {s.steps}"),
            ("batch_size", s.batch_size < 1, f"must be >= 1, got {s.batch_size}"),
            ("lr", not s.lr > 0, f"must be > 0, got {s.lr}"),
            ("alpha", not 0 <= s.alpha <= 1, f"must be in [0, 1], got {s.alpha}"),
            ("temperature", not s.temperature > 0, f"must be > 0, got {s.temperature}"),
            ("general", not 0 <= s.general < 1, f"must be in [0, 1), got {s.general}"),
        ]
        if bad
    ]
    if problems:
        raise ConfigError("invalid distillation settings", problems=problems)
    return s


# ---- the student ---------------------------------------------------------------------------


def merged_lm(lm: Any) -> Any:
    """``lm`` itself, or for a PEFT model a merged copy (adapters folded into the weights;
    the argument is left untouched)."""
    from peft import PeftModel

    if isinstance(lm, PeftModel):
        return copy.deepcopy(lm).merge_and_unload()
    return lm


def resolve_keep(keep: Keep, n_layers: int) -> list[int]:
    """The teacher layer indices a shallow student keeps: ``every-other`` is 0, 2, 4, …;
    a list must be strictly increasing indices in [0, n_layers)."""
    if keep == "every-other":
        return list(range(0, n_layers, 2))
    bad = [i for i in keep if not 0 <= i < n_layers]
    if not keep or bad or any(b <= a for a, b in itertools.pairwise(keep)):
        raise ConfigError(
            f"--keep {keep!r} does not fit a teacher of {n_layers} layers",
            hint=f"strictly increasing layer indices in 0..{n_layers - 1}, or every-other",
        )
    return list(keep)


def shallow_student(teacher_lm: Any, keep: Keep) -> Any:
    """A copy of the teacher's architecture with only the ``keep`` decoder layers.

    The student is built fresh from the teacher's config with ``num_hidden_layers =
    len(keep)`` (and every per-layer list of the config, such as ``layer_types``, cut to
    the kept layers), so its layers carry ``layer_idx`` 0..len(keep)-1 as the KV cache
    expects. Student layer j then receives teacher layer ``keep[j]``'s weights; the
    embeddings, the final norm and the LM head are copied as they are. A PEFT teacher is
    merged (on a copy) first, so the student starts from the fine-tuned weights.
    """
    teacher = merged_lm(teacher_lm)
    n = int(teacher.config.num_hidden_layers)
    kept = resolve_keep(keep, n)
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
            hint="use --student SPEC with a smaller model of the same tokenizer instead",
        )
    return f"{lists[0]}."


def check_vocab(teacher_tok: Any, student_tok: Any, teacher_lm: Any, student_lm: Any) -> None:
    """Raise ConfigError unless both tokenizers map the same tokens to the same ids and both
    LM heads produce the same number of logits (KL compares them position by position)."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        differ = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ConfigError(
            f"the student's tokenizer differs from the teacher's ({len(s_vocab)} vs "
            f"{len(t_vocab)} tokens; e.g. {differ})",
            hint="distil into a model of the same family (same tokenizer), or cut layers "
            "from the teacher with --keep",
        )
    t_rows = teacher_lm.get_output_embeddings().weight.shape[0]
    s_rows = student_lm.get_output_embeddings().weight.shape[0]
    if t_rows != s_rows:
        raise ConfigError(
            f"the student's LM head has {s_rows} outputs, the teacher's {t_rows}",
            hint="distil into a model with the same vocabulary size, or use --keep",
        )


# ---- data and the loss ------------------------------------------------------------------------


def mixed_batch(
    n_task: int, n_general: int, step: int, s: DistillSettings
) -> tuple[list[int], list[int]]:
    """Indices of step ``step``'s task and general examples: ``round(batch_size x general)``
    general ones (none without a general pool), the rest task; each stream walks seeded
    permutations, so the batch is a pure function of its arguments."""
    g = round(s.batch_size * s.general) if n_general else 0
    t = s.batch_size - g
    task = seeded_stream(n_task, t, seed=s.seed, stream="distill-task", start=step * t)
    general = (
        seeded_stream(n_general, g, seed=s.seed, stream="distill-general", start=step * g)
        if g
        else []
    )
    return task, general


def distill_terms(
    student: TaskModel,
    teacher: TaskModel,
    batch: dict[str, torch.Tensor],
    temperature: float,
    *,
    kl: bool = True,
    ce: bool = True,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ KL(p_teacher,τ ‖ p_student,τ) and Σ CE(student, reference) over the response
    positions of a collated batch (fp32 scalars; 0 where not asked for).

    Only the N response positions' hidden states, (N, H), reach the LM heads, which run a
    chunk of positions at a time (:func:`chunked_kl`, :func:`chunked_cross_entropy`): no
    (B, T, V) logits. The teacher runs under no_grad.
    """
    device = batch["input_ids"].device
    selected = batch["labels"][:, 1:] != IGNORE  # (B, T-1): token t+1 is predicted at t
    zero = torch.zeros((), device=device)
    with autocast(precision, device):
        h_s = student.hidden(batch["input_ids"], batch["attention_mask"])[:, :-1][selected]
        kl_sum = zero
        if kl:
            with torch.no_grad():
                h_t = teacher.hidden(batch["input_ids"], batch["attention_mask"])
            h_t = h_t[:, :-1][selected]  # (N, H)
            kl_sum = chunked_kl(student.lm_head, teacher.lm_head, h_s, h_t, temperature)
        targets = batch["labels"][:, 1:][selected]  # (N,)
        ce_sum = chunked_cross_entropy(student.lm_head, h_s, targets) if ce else zero
    return kl_sum, ce_sum


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
        kl, _ = distill_terms(s_model, t_model, batch, temperature, ce=False, precision=precision)
        total += float(kl)
    student.train(was[0])
    teacher.train(was[1])
    return total / max(sum(example_terms(e, "lm") for e in items), 1)


# ---- training ---------------------------------------------------------------------------


def train_student(
    student: Any,
    teacher: Any,
    task: Sequence[Encoded],
    general: Sequence[Encoded],
    s: DistillSettings,
    *,
    pad_id: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place toward ``teacher`` (frozen, eval mode) for ``s.steps``.

    Each step: a batch of task and general examples (:func:`mixed_batch`), the loss
    α·τ²·KL + (1−α)·CE with both terms means over the batch's response positions
    (:func:`distill_terms`), clipping, AdamW, the cosine schedule. Returns the training
    facts and the loss curve (every ``s.log_every`` steps).
    """
    if not task:
        raise ConfigError("distillation needs task examples: the train split is empty")
    torch.manual_seed(s.seed)
    device = next(student.parameters()).device
    s_model, t_model = TaskModel(student, "lm"), TaskModel(teacher, "lm")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in student.parameters():
        p.requires_grad_(True)
    optimizer = build_optimizer(student, lr=s.lr, weight_decay=s.weight_decay)
    warmup = warmup_steps(s.warmup, s.steps)
    scheduler = build_scheduler(optimizer, schedule="cosine", warmup=warmup, total_steps=s.steps)
    params = [p for p in student.parameters() if p.requires_grad]
    curve: list[dict[str, float]] = []
    tokens = 0
    started = time.perf_counter()
    student.train()
    for step in range(s.steps):
        t_idx, g_idx = mixed_batch(len(task), len(general), step, s)
        items = [task[i] for i in t_idx] + [general[i] for i in g_idx]
        n = max(sum(example_terms(e, "lm") for e in items), 1)  # response positions
        kl = ce = 0.0
        # pieces of at most max_batch_tokens padded tokens (long general rows apart from
        # short task rows): their summed terms are the batch's, so only memory changes
        for piece in micro_batches(items, pad_id, max_tokens=s.max_batch_tokens):
            kl_sum, ce_sum = distill_terms(
                s_model, t_model, {k: v.to(device) for k, v in piece.items()}, s.temperature,
                kl=s.alpha > 0, ce=s.alpha < 1, precision=s.precision,
            )  # fmt: skip
            ((s.alpha * s.temperature**2 * kl_sum + (1 - s.alpha) * ce_sum) / n).backward()
            kl, ce = kl + kl_sum.item() / n, ce + ce_sum.item() / n
        loss = s.alpha * s.temperature**2 * kl + (1 - s.alpha) * ce
        if not math.isfinite(loss):
            raise TrainingError(
                f"distillation loss became {loss} at step {step + 1}; no update was applied",
                hint="lower --lr, or use train.precision: fp32",
            )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm or math.inf))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(e.length for e in items)
        if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
            lr = float(scheduler.get_last_lr()[0])
            curve.append({"step": step + 1, "loss": loss, "kl": kl, "ce": ce, "lr": lr,
                          "grad_norm": grad_norm})  # fmt: skip
        if progress is not None:
            progress({"step": step + 1, "total": s.steps, "loss": loss})
    student.eval()
    seconds = time.perf_counter() - started
    return {
        "steps": s.steps,
        "seconds": round(seconds, 1),
        "tokens": tokens,
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
        "curve": curve,
    }
