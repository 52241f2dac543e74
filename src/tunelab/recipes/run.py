"""The stages of a run, wired from the config through small builder functions.

``run`` = prepare → base eval (zero-shot), base few-shot rows of the compare table and
base retention suite → train (with the forgetting mitigations, task metrics on a val subset
at each validation) → export → calibration temperature on val → eval of the best
checkpoint, its compare row and its retention → ``results.json`` → ``report.html`` and the
tracking summary. Each stage is also callable alone (the ``prepare``/``train`` verbs;
``eval``, ``compare`` and ``calibrate`` live in ``stages.py``). Components receive plain
values built from the config by ``builders.py``.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab import __version__
from tunelab.config import Config, dump_config
from tunelab.data.prepare import (
    Prepared,
    prepare,
    read_prepared,
)
from tunelab.data.split import sample
from tunelab.data.token_cache import cached_encode, tokenizer_fingerprint
from tunelab.data.tokenize import Encoded, PromptFormatter, encode, label_token_ids
from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluation.evaluate import EvalSettings, predict, score
from tunelab.evaluation.live import ValScorer
from tunelab.models.loading import describe_base, load_base, load_tokenizer
from tunelab.models.precision import resolve_precision
from tunelab.models.saved import is_trained_folder, save_temperature, save_trained
from tunelab.models.task_model import TaskModel, build_task_model
from tunelab.recipes import assess, forgetting
from tunelab.recipes.builders import data_spec, eval_settings, loop_settings
from tunelab.report import build_report
from tunelab.report.tracking import MlflowSink, final_scalars, open_mlflow
from tunelab.results import peak_rss_mb, write_json
from tunelab.training.checkpoint import load_weights, read_pointer
from tunelab.training.distributed import Dist, current
from tunelab.training.metrics_log import MetricsLog
from tunelab.training.setup import train

__all__ = [
    "Setup",
    "Stages",
    "TaskData",
    "encode_splits",
    "prepare_stage",
    "run_pipeline",
    "set_threads",
    "setup",
    "start_model",
]

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TaskData:
    """Prepared splits plus their token ids, for one tokenizer."""

    prepared: Prepared
    encoded: dict[str, list[Encoded]]
    label_ids: list[list[int]] | None


@dataclass(frozen=True)
class Stages:
    base_eval: bool = True
    train: bool = True
    tuned_eval: bool = True


def set_threads(threads: int | None) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


# ---- stages ----------------------------------------------------------------------------


def prepare_stage(cfg: Config, run_dir: Path, *, reuse: bool) -> Prepared:
    """Prepare data into ``run_dir/data`` (or reuse what a previous attempt wrote)."""
    folder = run_dir / "data"
    if reuse and (folder / "prepared.json").is_file():
        return read_prepared(folder)
    return prepare(data_spec(cfg), folder, tokenizer=load_tokenizer(cfg.model.base))


def encode_splits(cfg: Config, prep: Prepared, tokenizer: Any) -> TaskData:
    formatter = PromptFormatter(tokenizer, cfg.model.use_chat_template)
    key = [prep.hash, tokenizer_fingerprint(tokenizer), str(formatter.chat),
           str(cfg.model.max_length), ",".join(prep.labels or [])]  # fmt: skip
    encoded, _cached = cached_encode(
        prep.splits,
        lambda ex: encode(
            tokenizer, formatter, ex, max_length=cfg.model.max_length, labels=prep.labels
        ),
        key_parts=key,
    )
    label_ids = label_token_ids(tokenizer, prep.words) if prep.words else None
    if cfg.method.head == "classifier":  # the head reads the prompt; response tokens unused
        encoded = {k: [e.prompt_only() for e in v] for k, v in encoded.items()}
    return TaskData(prep, encoded, label_ids)


def val_subset(items: list[Encoded], cap: int | None, seed: int) -> list[Encoded]:
    if cap is None or len(items) <= cap:
        return items
    idx = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:cap]
    return [items[i] for i in sorted(idx.tolist())]


def model_info(cfg: Config, prep: Prepared) -> dict[str, Any]:
    """What ``tunelab_model.json`` records to rebuild and prompt the model."""
    return {
        "base": cfg.model.base,
        "kind": cfg.method.kind,
        "head": cfg.method.head,
        "format": prep.format,
        "labels": prep.labels,
        "label_words": prep.label_words,
        "template": prep.card.get("template"),
        "system_prompt": cfg.data.system_prompt,
        "use_chat_template": cfg.model.use_chat_template,
        "max_length": cfg.model.max_length,
        "tunelab_version": __version__,
        "data_hash": prep.hash,
    }


def start_model(cfg: Config, lm: Any, task: TaskData) -> TaskModel:
    """The model training starts from: ``lm`` adapted for ``method``, seeded, so a resumed
    run and ``forgetting sweep`` rebuild exactly the same start (LoRA initialisation)."""
    torch.manual_seed(cfg.train.seed)
    return build_task_model(
        lm,
        kind=cfg.method.kind,
        head=cfg.method.head,
        label_token_ids=[ids[0] for ids in task.label_ids] if task.label_ids else None,
        lora_r=cfg.method.lora.r,
        lora_alpha=cfg.method.lora.alpha,
        lora_dropout=cfg.method.lora.dropout,
        lora_targets=cfg.method.lora.targets,
        lora_layers=cfg.method.lora.layers,
    )


@dataclass
class Setup:
    """What every stage needs: prepared data, tokenizer, token ids, device, precision."""

    prep: Prepared
    tokenizer: Any
    task: TaskData
    device: torch.device
    precision: str
    ev: EvalSettings
    threads: int


def setup(
    cfg: Config,
    *,
    reuse_data: bool,
    threads: int | None,
    tokenizer: Any = None,
    device: torch.device | None = None,
) -> Setup:
    n_threads = set_threads(threads)
    prep = prepare_stage(cfg, cfg.run_dir, reuse=reuse_data)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.base)
    task = encode_splits(cfg, prep, tokenizer)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.train.precision, device)
    ev = eval_settings(cfg, precision, tokenizer.pad_token_id, prep.labels is not None)
    return Setup(prep, tokenizer, task, device, precision, ev, n_threads)


def run_pipeline(
    cfg: Config,
    *,
    stages: Stages = Stages(),
    resume: bool = False,
    progress: Progress | None = None,
    events: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the configured stages into ``cfg.run_dir`` and return ``results.json``'s content."""
    say = events or (lambda _msg: None)
    started = time.perf_counter()
    run_dir = cfg.run_dir
    dist = current().using(cfg.train.parallel)
    if dist.world > 1:
        check_distributed(cfg, stages)
        say = say if dist.is_main else (lambda _msg: None)
        progress = progress if dist.is_main else None
    config_yaml = dump_config(cfg)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.resolved.yaml").write_text(config_yaml)
    torch.manual_seed(cfg.train.seed)
    with dist.main_first():  # rank 0 prepares the data and fills the caches; the rest read
        env = setup(
            cfg, reuse_data=resume or not dist.is_main, threads=rank_threads(cfg, dist),
            device=dist.device,
        )  # fmt: skip
    prep, task, tokenizer, ev, device = env.prep, env.task, env.tokenizer, env.ev, env.device
    precision = env.precision
    say(f"data: {prep.card['format_note']}; splits {prep.card['splits']}")
    mitigations = forgetting.build_mitigations(cfg) if stages.train else []  # config errors first
    calibrating = stages.tuned_eval and assess.calibration_wanted(cfg, prep.labels)
    sink = _mlflow(cfg) if stages.train and dist.is_main else None
    lm = load_base(cfg.model.base, dropout=cfg.train.dropout)
    # FSDP moves each unit's shards to the device as it shards: the whole model never has
    # to fit one GPU (it stays in host memory until then)
    if not dist.fsdp:
        lm = lm.to(device)
    say(f"model: {cfg.model.base} on {device} ({precision}, {env.threads} threads)")
    if dist.world > 1:
        say(f"data parallel: {dist.world} processes ({dist.kind}, {dist.backend})")

    results: dict[str, Any] = {
        "tunelab_version": __version__,
        "run": cfg.name,
        "model": describe_base(cfg.model.base),
        "method": {"kind": cfg.method.kind, "head": cfg.method.head},
        "data": prep.card,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(device), "precision": precision, "threads": env.threads},
    }  # fmt: skip
    test, test_examples = task.encoded["test"], prep.splits["test"]
    scoring: dict[str, Any] = {"labels": prep.labels, "label_ids": task.label_ids}
    base_pred = None
    if stages.base_eval and cfg.eval.base and test:
        say(f"evaluating the base model zero-shot on {len(test)} test examples")
        base_pred = predict(TaskModel(lm, "lm"), tokenizer, test_examples, test, ev, **scoring)
        results["base"] = score(base_pred, test_examples, ev, labels=prep.labels)
    comparing = stages.tuned_eval and cfg.compare.enabled and bool(test)
    if comparing:  # before training: LoRA and full fine-tuning change `lm` in place
        rows, skipped = assess.base_rows(
            cfg, TaskModel(lm, "lm"), tokenizer, prep.splits, test, ev, **scoring,
            base_pred=base_pred, say=say,
        )  # fmt: skip
    retention = stages.tuned_eval and forgetting.enabled(cfg)
    if retention:
        suite = forgetting.suite_settings(cfg, precision)
        probes = forgetting.build_probes(cfg, tokenizer, suite, run_dir / "forgetting")
        say(f"retention suite: {len(probes)} probes on the base model")
        base_retention, cached = forgetting.base_measurement(
            cfg, TaskModel(lm, "lm"), tokenizer, probes, suite
        )
        if cached:
            say("retention of the base model: cached")

    model = start_model(cfg, lm, task)
    if not dist.fsdp:
        model = model.to(device)
    results["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results["total_params"] = sum(p.numel() for p in model.parameters())

    log: MetricsLog | None = None
    if stages.train:
        log = MetricsLog(run_dir, tensorboard=cfg.tracking.tensorboard and dist.is_main,
                         sinks=(sink,) if sink else ())  # fmt: skip
        if sink is not None:
            sink.params(cfg.model_dump(mode="json"))
        say(f"training on {len(task.encoded['train'])} examples")
        val = val_subset(task.encoded["val"], cfg.train.val_max_examples, cfg.train.seed)
        state = train(
            model,
            task.encoded["train"],
            val,
            loop_settings(cfg, precision, tokenizer.pad_token_id),
            checkpoints=run_dir / "checkpoints",
            config_yaml=config_yaml,
            log=log,
            resume=resume,
            progress=progress,
            mitigations=mitigations,
            ctx=forgetting.mitigation_context(cfg, tokenizer, precision, run_dir / "forgetting")
            if mitigations
            else None,
            # scored on rank 0; under FSDP every rank takes part in each forward
            val_metrics=val_scorer(cfg, env, run_dir, writes=dist.is_main)
            if dist.is_main or dist.fsdp
            else None,
            dist=dist,
            # killed after its last checkpoint, before the model was written: finish it
            finished_ok=not is_trained_folder(run_dir / "model"),
        )
        # each rank's memory: its high-water mark, and what its training state takes
        memory = dist.gather((peak_rss_mb(), state.held_mb))
        if not dist.is_main:  # rank 0 writes the model and results; the others are done
            dist.close()
            return {"training": {"steps": state.step, "stopped": state.stopped}}
        if dist.fsdp:  # rank 0 assembles the best model unsharded, in host memory, to save it
            model = start_model(cfg, load_base(cfg.model.base, dropout=cfg.train.dropout), task)
        best = read_pointer(run_dir / "checkpoints").get("best")
        if best:
            trainable = load_weights(run_dir / "checkpoints" / best)
            model.load_trainable_state(trainable)
        staged = run_dir / "forgetting" / "model-files"  # files mitigations add to model/
        shutil.rmtree(staged, ignore_errors=True)  # none left over from an earlier attempt
        facts: dict[str, Any] = {}
        for m in mitigations:
            facts.update(m.finish(model, staged))
        results["training"] = {
            "steps": state.step,
            "stopped": state.stopped,
            "best_step": state.best_step,
            "best_val_loss": state.best_val,
            "tokens": state.tokens,
            "seconds": round(state.elapsed, 1),
            "tokens_per_second": round(state.tokens / max(state.elapsed, 1e-9), 1),
            "skipped_steps": state.skipped,
            "processes": dist.world,
            "held_mb": state.held_mb,  # parameters + gradients + optimizer state (rank 0)
        }
        if dist.world > 1:
            results["training"] |= {
                "parallel": dist.kind,
                "peak_rss_mb_per_rank": [rss for rss, _ in memory],
                "held_mb_per_rank": [held for _, held in memory],
            }
        if mitigations:
            results["mitigations"] = {"used": [m.name for m in mitigations], **facts}
        save_trained(model, tokenizer, run_dir / "model", model_info(cfg, prep))
        for file in sorted(staged.glob("*")) if staged.is_dir() else []:
            shutil.copy2(file, run_dir / "model" / file.name)
        say(f"best checkpoint: {best} (val loss {state.best_val:.4f}); model saved")

    if stages.tuned_eval and test:
        say(f"evaluating the fine-tuned model on {len(test)} test examples")
        tuned_pred = predict(model, tokenizer, test_examples, test, ev, **scoring)
        temperature = 1.0
        if calibrating and task.encoded["val"]:
            say("calibration: fitting a temperature on the val split")
            calibration = assess.calibrate(
                cfg, model, tokenizer, (prep.splits["val"], task.encoded["val"]), tuned_pred,
                test, ev, labels=prep.labels or [], label_ids=task.label_ids or [],
            )  # fmt: skip
            temperature = calibration["temperature"]
            results["calibration"] = calibration
            if (run_dir / "model").is_dir():
                save_temperature(run_dir / "model", calibration)
        results["tuned"] = score(
            tuned_pred, test_examples, ev, labels=prep.labels, temperature=temperature
        )
        if comparing:
            rows.append(assess.tuned_row(cfg, model, tokenizer, test_examples, test, ev,
                                         **scoring, tuned_pred=tuned_pred))  # fmt: skip
            results["compare"] = assess.compare_table(rows, prep.labels is not None, skipped)
    if retention:
        say("retention suite on the fine-tuned model")
        report = forgetting.tuned_report(cfg, model, tokenizer, probes, suite, base_retention)
        report["base_cached"] = cached
        results["forgetting"] = report
        write_json(run_dir / "forgetting.json", report)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["peak_rss_mb"] = peak_rss_mb()
    write_json(run_dir / "results.json", results)
    finish_outputs(cfg, results, log, sink)
    dist.close()
    if retention:
        forgetting.check_retention(results["forgetting"], cfg, run_dir)
    return results


def check_distributed(cfg: Config, stages: Stages) -> None:
    """What a data-parallel launch runs: training only, without the mitigations."""
    if stages.base_eval or stages.tuned_eval:
        raise TunelabError(
            "a distributed launch (WORLD_SIZE > 1) runs `tunelab train` only",
            hint="launch `tunelab train CONFIG --nproc N`, then run `tunelab eval CONFIG` "
            "(one process) on the trained model",
        )
    if forgetting.build_mitigations(cfg):
        raise ConfigError(
            "forgetting.mitigations are not supported in a distributed run yet",
            hint="remove forgetting.mitigations, or train with one process",
        )


def rank_threads(cfg: Config, dist: Dist) -> int | None:
    """CPU threads of this process: ``train.threads``, else the cores shared by the
    processes of this machine."""
    if cfg.train.threads is not None or dist.world == 1:
        return cfg.train.threads
    return max(1, (os.cpu_count() or 1) // dist.local_world)


def val_scorer(cfg: Config, env: Setup, run_dir: Path, writes: bool = True) -> ValScorer | None:
    """The task metrics scored on a val subset during training (``eval.val_examples``);
    ``writes``: keeps samples in ``val_samples.jsonl``."""
    n, examples = cfg.eval.val_examples, env.prep.splits["val"]
    if n == 0 or not examples:
        return None
    idx = sample(range(len(examples)), n, cfg.train.seed)
    return ValScorer(
        env.tokenizer, [examples[i] for i in idx], [env.task.encoded["val"][i] for i in idx],
        env.ev, every=cfg.eval.val_every or cfg.train.eval_every,
        samples_path=run_dir / "val_samples.jsonl" if writes else None,
        labels=env.prep.labels, label_ids=env.task.label_ids,
    )  # fmt: skip


def _mlflow(cfg: Config) -> MlflowSink | None:
    t = cfg.tracking
    if not t.mlflow:
        return None
    uri = t.mlflow_uri or f"file:{(cfg.output_dir / 'mlruns').resolve()}"
    return open_mlflow(uri, t.experiment, cfg.name)


def finish_outputs(
    cfg: Config, results: dict[str, Any], log: MetricsLog | None, sink: MlflowSink | None
) -> None:
    """After ``results.json``: the report, the summary scalars, the MLflow artifacts."""
    run_dir = cfg.run_dir
    if cfg.eval.report:
        build_report(run_dir)
    summary = final_scalars(results)
    step = int(results.get("training", {}).get("steps") or 0)
    if log is not None:
        log.scalars(summary, step)
        log.close()
    if sink is not None:
        if log is None:
            sink.scalars(summary, step)
        for name in ("results.json", "report.html", "config.resolved.yaml"):
            sink.artifact(run_dir / name)
        sink.close()
