"""The distillation stage (``tunelab distill``): teacher in, student and comparison out.

:func:`distill_stage` wires distillation from a config's ``distill`` section: it loads the
teacher (LoRA merged), builds the student (cut from the teacher, or a smaller model with
the same tokenizer: ``models/student.py``), and trains it with the ``distill`` objective
(``training/objectives/distill.py``) through the one training loop, on the task's train
split mixed with general data — so distillation has checkpoints, resume, early stopping
and data parallelism like any run. It writes ``<out>/distill/`` (checkpoints and
metrics.jsonl), ``<out>/student/`` (a tunelab model folder, kind ``full``) and
``<out>/distill.json`` (teacher vs student: parameters, size on disk, generation tokens/s,
test metrics, held-out KL before and after).
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab import __version__
from tunelab.config import Config, dump_config
from tunelab.config.schema import TrainConfig
from tunelab.data.tokenize import Encoded, PromptFormatter, encode
from tunelab.errors import ConfigError
from tunelab.evaluation.evaluate import evaluate
from tunelab.forgetting.general import general_training_examples
from tunelab.models.loading import load_base, load_tokenizer
from tunelab.models.saved import is_trained_folder, load_trained, save_trained
from tunelab.models.student import check_vocab, mean_kl, merged_lm, shallow_student, student_layers
from tunelab.models.task_model import TaskModel
from tunelab.recipes.run import val_scorer, val_subset
from tunelab.recipes.setup import Setup, setup
from tunelab.results import peak_rss_mb, write_json
from tunelab.training.checkpoint import load_weights, read_pointer
from tunelab.training.distributed import current
from tunelab.training.metrics_log import MetricsLog, read_metrics
from tunelab.training.objectives.distill import GENERAL, Distill
from tunelab.training.setup import LoopSettings, train

__all__ = ["distill_stage", "distill_train_section", "generation_speed", "safetensors_bytes"]

Progress = Callable[[dict[str, Any]], None]
MAX_GENERAL = 4096  # general examples encoded for mixing, at most
SPEED_PROMPTS = 4  # test prompts timed for tokens/s
SPEED_TOKENS = 32  # new tokens per timed prompt
KL_EXAMPLES = 128  # val examples of the held-out KL


def distill_stage(
    cfg: Config,
    *,
    teacher: Path | None = None,
    out: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Distil the fine-tuned model of ``teacher`` (a run or model folder; default the
    config's run folder) into the student ``cfg.distill`` describes and write
    ``<out>/student/`` and ``<out>/distill.json`` (``out`` defaults to the config's run
    folder). ``resume`` continues from ``<out>/distill/checkpoints``. Returns the JSON
    (on the other ranks of a data-parallel launch: the training facts only).
    """
    d = cfg.distill
    dist = current().using(cfg.train.parallel)
    teacher_dir = teacher if teacher is not None else cfg.run_dir
    out = out if out is not None else cfg.run_dir
    t_task, tokenizer, t_info = load_trained(teacher_dir)
    if t_task.head != "lm":
        raise ConfigError(
            f"the teacher in {teacher_dir} has a classifier head; distillation matches LM "
            "next-token distributions",
            hint="distil a teacher trained with method.head: lm",
        )
    with dist.main_first():
        env = setup(cfg, reuse_data=True, threads=cfg.train.threads, tokenizer=tokenizer,
                    device=dist.device)  # fmt: skip
    t_lm = merged_lm(t_task.lm).to(env.device)
    del t_task
    n_layers = int(t_lm.config.num_hidden_layers)
    kept = None if d.student is not None else student_layers(d.layers, n_layers)
    s_lm = _student(cfg, t_lm, tokenizer, kept, env.device)
    say(f"student: {d.student}" if kept is None else
        f"student: teacher layers {kept} ({len(kept)} of {n_layers})")  # fmt: skip

    prep, encoded, pad_id = env.prep, env.task.encoded, tokenizer.pad_token_id
    task_items = [replace(e, extras={GENERAL: 0.0}) for e in encoded["train"]]
    general = _general_items(cfg, tokenizer, len(task_items))
    kl_val = encoded["val"][:KL_EXAMPLES]
    val_kl = {"before": mean_kl(s_lm, t_lm, kl_val, pad_id=pad_id, precision=env.precision)}
    section = distill_train_section(cfg)
    say(f"distilling {section.max_steps} steps of {section.batch_size} examples "
        f"({len(task_items)} task, {len(general)} general)")  # fmt: skip
    torch.manual_seed(section.seed)
    student = TaskModel(s_lm.requires_grad_(True), "lm")
    objective = Distill(TaskModel(t_lm, "lm"), alpha=d.alpha, temperature=d.temperature,
                        general=d.general if general else 0.0)  # fmt: skip
    work = out / "distill"
    log = MetricsLog(work, tensorboard=False)
    started = time.perf_counter()
    state = train(
        student, task_items + general,
        val_subset(encoded["val"], cfg.train.val_max_examples, cfg.train.seed),
        LoopSettings(section, env.precision, pad_id, row_tokens=cfg.model.max_length),
        checkpoints=work / "checkpoints", config_yaml=dump_config(cfg), log=log,
        objective=objective, resume=resume, progress=progress,
        # scored at the distillation's own validations
        val_metrics=val_scorer(cfg.model_copy(update={"train": section}), env, work,
                               writes=dist.is_main) if dist.is_main or dist.fsdp else None,
        dist=dist, finished_ok=not is_trained_folder(out / "student"),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    log.close()
    training: dict[str, Any] = {
        "steps": state.step, "stopped": state.stopped, "best_step": state.best_step,
        "best_val_loss": state.best_val, "tokens": state.tokens,
        "train_seconds": round(state.elapsed, 1), "stage_seconds": round(seconds, 1),
        "processes": dist.world,
    }  # fmt: skip
    if not dist.is_main:
        dist.close()
        return {"training": training}
    if dist.fsdp:  # rank 0 rebuilds the student unsharded, in host memory, to save it
        s_lm = _student(cfg, t_lm, tokenizer, kept, env.device)
    best = read_pointer(work / "checkpoints").get("best")
    if best:
        TaskModel(s_lm, "lm").load_trainable_state(load_weights(work / "checkpoints" / best))
    s_lm.eval()
    val_kl["after"] = mean_kl(s_lm, t_lm, kl_val, pad_id=pad_id, precision=env.precision)
    training["curve"] = [m for m in read_metrics(work / "metrics.jsonl") if "loss" in m]

    info = {
        **t_info, "kind": "full", "head": "lm", "base": d.student or t_info["base"],
        "distilled_from": str(teacher_dir), "kept_layers": kept,
        "teacher_layers": n_layers, "student_layers": int(s_lm.config.num_hidden_layers),
        "tunelab_version": __version__, "data_hash": prep.hash,
    }  # fmt: skip
    folder = save_trained(TaskModel(s_lm, "lm"), tokenizer, out / "student", info)
    say(f"student saved in {folder} (best step {best}); measuring teacher and student")
    teacher_side = _measure(t_lm, _teacher_bytes(t_lm, teacher_dir, t_info), tokenizer, env)
    student_side = _measure(s_lm, safetensors_bytes(folder), tokenizer, env)
    result: dict[str, Any] = {
        "tunelab_version": __version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "teacher": {"path": str(teacher_dir), **teacher_side},
        "student": {"path": str(folder), "kept_layers": kept, "spec": d.student,
                    "val_kl": val_kl, **student_side},
        "settings": {**d.model_dump(mode="json"), "train": section.model_dump(mode="json")},
        "training": training,
        "data": {"hash": prep.hash, "teacher_data_hash": t_info.get("data_hash"),
                 "task_examples": len(task_items), "general_examples": len(general),
                 "val_kl_examples": len(kl_val)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(env.device), "precision": env.precision,
                        "threads": env.threads, "peak_rss_mb": peak_rss_mb()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distill.json", result)
    dist.close()
    return result


def distill_train_section(cfg: Config) -> TrainConfig:
    """The loop's settings for distillation: the ``train`` section with the ``distill``
    section's steps, learning rate, batch size and validation interval, validated again
    (packing off: the distill objective reads which examples are general data)."""
    d = cfg.distill
    return TrainConfig.model_validate(
        {**cfg.train.model_dump(), "max_steps": d.steps, "lr": d.lr, "batch_size": d.batch_size,
         "eval_every": d.eval_every or cfg.train.eval_every, "packing": False}
    )  # fmt: skip


def _student(cfg: Config, t_lm: Any, tokenizer: Any, kept: list[int] | None, device: Any) -> Any:
    """The student as training starts: the teacher cut to ``kept`` layers, or the model
    ``distill.student`` names (same tokenizer required); the same every time it is built."""
    if kept is not None:
        return shallow_student(t_lm, kept)
    spec = str(cfg.distill.student)
    s_lm = load_base(spec).to(device)
    check_vocab(tokenizer, load_tokenizer(spec), t_lm, s_lm)
    return s_lm


def _general_items(cfg: Config, tokenizer: Any, n_task: int) -> list[Encoded]:
    """Encoded general examples (the retention suite's train part), marked as general: a
    share ``distill.general`` of the training list's examples, at most MAX_GENERAL."""
    g = cfg.distill.general
    n = min(round(n_task * g / (1 - g)), MAX_GENERAL)
    if n == 0:
        return []
    formatter = PromptFormatter(tokenizer, cfg.model.use_chat_template)
    marked = {GENERAL: 1.0}
    encoded = (encode(tokenizer, formatter, ex, max_length=cfg.model.max_length)
               for ex in general_training_examples(n, cfg.train.seed))  # fmt: skip
    return [replace(e, extras=marked) for e in encoded]


def _measure(lm: Any, size_bytes: int, tokenizer: Any, env: Setup) -> dict[str, Any]:
    """One side of the comparison: size, generation speed, test metrics."""
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
