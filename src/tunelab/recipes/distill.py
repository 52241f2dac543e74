"""The distillation stage (``tunelab distill``): teacher in, student and comparison out.

:func:`distill_stage` wires :mod:`tunelab.recipes.distill_student` from a config: it loads the
teacher, builds the student (cut from the teacher, or a smaller model with the same
tokenizer), trains it on the task's train split mixed with general data, and writes
``<out>/student/`` (a tunelab model folder, kind ``full``) and ``<out>/distill.json``
(teacher vs student: parameters, size on disk, generation tokens/s, test metrics, held-out
KL before and after).
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab import __version__
from tunelab.config import Config
from tunelab.data.tokenize import Encoded, PromptFormatter, encode
from tunelab.errors import ConfigError
from tunelab.evaluation.evaluate import evaluate
from tunelab.forgetting.general import general_training_examples
from tunelab.models.loading import load_base, load_tokenizer
from tunelab.models.saved import load_trained, save_trained
from tunelab.models.task_model import TaskModel
from tunelab.recipes.distill_student import (
    DistillSettings,
    Keep,
    Progress,
    check_vocab,
    distill_settings,
    mean_kl,
    merged_lm,
    resolve_keep,
    shallow_student,
    train_student,
)
from tunelab.results import peak_rss_mb, write_json

__all__ = ["distill_stage", "generation_speed", "safetensors_bytes"]

MAX_GENERAL = 4096  # general examples encoded for mixing, at most
SPEED_PROMPTS = 4  # test prompts timed for tokens/s
SPEED_TOKENS = 32  # new tokens per timed prompt
KL_EXAMPLES = 128  # val examples of the held-out KL


def distill_stage(
    cfg: Config,
    *,
    teacher: Path | None = None,
    out: Path | None = None,
    keep: Keep | None = None,
    student: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Distil the fine-tuned model of ``teacher`` (a run or model folder; default the
    config's run folder) into a student — cut from the teacher with ``keep`` (default
    every other layer) or the model ``student`` names — and write ``<out>/student/`` and
    ``<out>/distill.json`` (``out`` defaults to the config's run folder). Returns the JSON.

    ``overrides``: the CLI's knobs (``steps``, ``batch_size``, ``lr``, ``alpha``,
    ``temperature``, ``general``; None keeps the default).
    """
    from tunelab.recipes.run import setup  # the stage sits on top of the run recipe's builders

    if keep is not None and student is not None:
        raise ConfigError(
            "give either --keep or --student, not both",
            hint="--keep cuts layers from the teacher; --student names a smaller model",
        )
    teacher_dir = teacher if teacher is not None else cfg.run_dir
    out = out if out is not None else cfg.run_dir
    t_task, tokenizer, t_info = load_trained(teacher_dir)
    if t_task.head != "lm":
        raise ConfigError(
            f"the teacher in {teacher_dir} has a classifier head; distillation matches LM "
            "next-token distributions",
            hint="distil a teacher trained with method.head: lm",
        )
    env = setup(cfg, reuse_data=True, threads=cfg.train.threads, tokenizer=tokenizer)
    s = distill_settings(cfg, env.precision, overrides)
    t_lm = merged_lm(t_task.lm).to(env.device)
    del t_task
    kept: list[int] | None = None
    if student is None:
        kept = resolve_keep(keep or "every-other", int(t_lm.config.num_hidden_layers))
        say(f"student: teacher layers {kept} ({len(kept)} of {t_lm.config.num_hidden_layers})")
        s_lm = shallow_student(t_lm, kept)
    else:
        s_lm = load_base(student).to(env.device)
        check_vocab(tokenizer, load_tokenizer(student), t_lm, s_lm)
        say(f"student: {student}")

    prep, encoded, pad_id = env.prep, env.task.encoded, tokenizer.pad_token_id
    general = _general_items(cfg, tokenizer, s)
    val = encoded["val"][:KL_EXAMPLES]
    val_kl = {"before": mean_kl(s_lm, t_lm, val, pad_id=pad_id, precision=s.precision)}
    say(f"distilling {s.steps} steps of {s.batch_size} examples ({len(encoded['train'])} "
        f"task, {len(general)} general)")  # fmt: skip
    training = train_student(s_lm, t_lm, encoded["train"], general, s,
                             pad_id=pad_id, progress=progress)  # fmt: skip
    val_kl["after"] = mean_kl(s_lm, t_lm, val, pad_id=pad_id, precision=s.precision)

    info = {
        **t_info, "kind": "full", "head": "lm", "base": student or t_info["base"],
        "distilled_from": str(teacher_dir), "kept_layers": kept,
        "teacher_layers": int(t_lm.config.num_hidden_layers),
        "student_layers": int(s_lm.config.num_hidden_layers),
        "tunelab_version": __version__, "data_hash": prep.hash,
    }  # fmt: skip
    folder = save_trained(TaskModel(s_lm, "lm"), tokenizer, out / "student", info)
    say(f"student saved in {folder}; measuring teacher and student")
    teacher_side = _measure(t_lm, _teacher_bytes(t_lm, teacher_dir, t_info), tokenizer, env)
    student_side = _measure(s_lm, safetensors_bytes(folder), tokenizer, env)
    result: dict[str, Any] = {
        "tunelab_version": __version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "teacher": {"path": str(teacher_dir), **teacher_side},
        "student": {"path": str(folder), "kept_layers": kept, "spec": student,
                    "val_kl": val_kl, **student_side},
        "settings": asdict(s),
        "training": training,
        "data": {"hash": prep.hash, "teacher_data_hash": t_info.get("data_hash"),
                 "task_examples": len(encoded["train"]), "general_examples": len(general),
                 "val_kl_examples": len(val)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(env.device), "precision": s.precision,
                        "threads": env.threads, "peak_rss_mb": peak_rss_mb()},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distill.json", result)
    return result


def _general_items(cfg: Config, tokenizer: Any, s: DistillSettings) -> list[Encoded]:
    """Encoded general examples (retention suite's train part), one per general batch slot."""
    n = min(round(s.batch_size * s.general) * s.steps, MAX_GENERAL)
    if n == 0:
        return []
    formatter = PromptFormatter(tokenizer, cfg.model.use_chat_template)
    return [
        encode(tokenizer, formatter, ex, max_length=cfg.model.max_length)
        for ex in general_training_examples(n, s.seed)
    ]


def _measure(lm: Any, size_bytes: int, tokenizer: Any, env: Any) -> dict[str, Any]:
    """One side of the comparison: size, generation speed, test metrics (``env``: a
    :class:`tunelab.recipes.run.Setup`)."""
    prep, task = env.prep, env.task
    test = task.encoded["test"]
    prompts = [e.prompt_only().input_ids for e in (test or task.encoded["val"])[:SPEED_PROMPTS]]
    metrics = None
    if test:
        result = evaluate(TaskModel(lm, "lm"), tokenizer, prep.splits["test"], test, env.ev,
                          labels=prep.labels, label_ids=task.label_ids)  # fmt: skip
        metrics = {k: result[k] for k in ("n", "metrics", "ci95", "seconds")}
    return {
        "layers": int(lm.config.num_hidden_layers),
        "params": _params(lm),
        "size_bytes": size_bytes,
        "tokens_per_second": round(generation_speed(lm, prompts, pad_id=tokenizer.pad_token_id), 1),
        "test": metrics,
    }


def _teacher_bytes(lm: Any, teacher_dir: Path, info: Mapping[str, Any]) -> int:
    """The teacher's weights on disk as a standalone model: its own files for full
    fine-tuning; for LoRA the merged model saved to a temporary folder (what export writes)."""
    own = teacher_dir / "model" if (teacher_dir / "model").is_dir() else teacher_dir
    if info["kind"] == "full" and safetensors_bytes(own):
        return safetensors_bytes(own)
    with tempfile.TemporaryDirectory() as tmp:
        lm.save_pretrained(tmp)
        return safetensors_bytes(Path(tmp))


@torch.no_grad()
def generation_speed(
    lm: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, new_tokens: int = SPEED_TOKENS
) -> float:
    """Greedy generation tokens/s at batch size 1: exactly ``new_tokens`` per prompt (EOS
    suppressed), KV cache on, after one untimed warm-up prompt."""
    was = lm.training
    lm.eval()
    device = next(lm.parameters()).device

    def run(ids: Sequence[int], n: int) -> None:
        x = torch.tensor([list(ids)], device=device)
        lm.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                    min_new_tokens=n, do_sample=False, pad_token_id=pad_id)  # fmt: skip

    run(prompts[0], 4)
    started = time.perf_counter()
    for ids in prompts:
        run(ids, new_tokens)
    seconds = time.perf_counter() - started
    lm.train(was)
    return len(prompts) * new_tokens / seconds


def safetensors_bytes(folder: Path) -> int:
    """Bytes of the ``*.safetensors`` files in ``folder`` (the weights on disk)."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _params(lm: nn.Module) -> int:
    return sum(p.numel() for p in lm.parameters())  # tied weights counted once
