"""The whole pipeline: :func:`run_pipeline`, a table of contents of its stages.

``run`` = prepare → base eval (zero-shot), base few-shot rows of the compare table and
base retention suite → train (with the forgetting mitigations, task metrics on a val subset
at each validation) → save the best checkpoint → calibration temperature on val → eval of
the best checkpoint, its compare row and its retention → ``results.json`` → ``report.html``
and the tracking summary. Each stage function returns its typed part of
:class:`tunelab.results.Results`. Each stage is also callable alone (the
``prepare``/``train`` verbs; ``eval``, ``compare`` and ``calibrate`` live in
``stages.py``); what they all start from is ``setup.py``. Components receive plain values
built from the config by ``builders.py``.
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
from tunelab.data.split import sample
from tunelab.data.tokenize import Encoded
from tunelab.data.types import Example
from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluation.evaluate import Predictions, predict, score
from tunelab.evaluation.live import ValScorer
from tunelab.forgetting.measure import Measurement
from tunelab.forgetting.mitigations import Mitigation
from tunelab.forgetting.probes import Probe, SuiteSettings
from tunelab.models.loading import describe_base, load_base
from tunelab.models.saved import is_trained_folder, save_temperature, save_trained
from tunelab.models.task_model import TaskModel
from tunelab.recipes import assess, forgetting
from tunelab.recipes.builders import loop_settings
from tunelab.recipes.setup import (
    Setup,
    model_info,
    setup,
    start_model,
)
from tunelab.report import build_report
from tunelab.report.tracking import MlflowSink, final_scalars, open_mlflow
from tunelab.results import (
    Calibration,
    CompareRow,
    CompareTable,
    DataCard,
    Environment,
    Evaluation,
    Method,
    Mitigations,
    ModelSource,
    Results,
    Retention,
    Training,
    peak_rss_mb,
    write_json,
    write_results,
)
from tunelab.training.checkpoint import TrainState, load_weights, read_pointer
from tunelab.training.distributed import Dist, current
from tunelab.training.metrics_log import MetricsLog
from tunelab.training.setup import train

__all__ = ["Stages", "check_distributed", "run_pipeline", "val_scorer", "val_subset"]

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Stages:
    base_eval: bool = True
    train: bool = True
    tuned_eval: bool = True


def run_pipeline(
    cfg: Config,
    *,
    stages: Stages = Stages(),
    resume: bool = False,
    progress: Progress | None = None,
    events: Callable[[str], None] | None = None,
) -> Results:
    """Run the configured stages into ``cfg.run_dir`` and return what ``results.json`` holds.

    Each stage below returns its part of the results; the order is the order they run in.
    """
    started = time.perf_counter()
    run = open_run(cfg, stages, events, resume=resume)
    test = run.env.task.encoded["test"]
    results = header(run)
    base_pred = None
    if stages.base_eval and cfg.eval.base and test:
        base_pred, results.base = base_eval(run)
    comparing = stages.tuned_eval and cfg.compare.enabled and bool(test)
    # the base rows and the base retention come before training: LoRA and full
    # fine-tuning change the base model (`run.lm`) in place
    rows, skipped = base_compare_rows(run, base_pred) if comparing else ([], [])
    base = base_retention(run) if stages.tuned_eval and forgetting.enabled(cfg) else None
    model = start_on_device(run)
    results.trainable_params, results.total_params = parameter_counts(model)
    log = None
    if stages.train:
        state, memory, log = train_stage(run, model, resume=resume, progress=progress)
        if not run.dist.is_main:  # rank 0 writes the model and results; the others are done
            run.dist.close()
            return Results(training=Training(steps=state.step, stopped=state.stopped))
        model, results.training, results.mitigations = save(run, model, state, memory)
    if stages.tuned_eval and test:
        tuned_pred, results.tuned, results.calibration = tuned_eval(run, model)
        if comparing:
            results.compare = tuned_compare(run, model, tuned_pred, rows, skipped)
    if base is not None:
        results.forgetting = tuned_retention(run, model, base)
    return write_outputs(run, results, log, started)


# ---- the stages of run_pipeline, in order ----------------------------------------------


@dataclass
class Run:
    """What the stages of one ``run_pipeline`` share."""

    cfg: Config
    env: Setup
    dist: Dist
    say: Callable[[str], None]
    config_yaml: str  # config.resolved.yaml, also saved inside every checkpoint
    lm: Any  # the base model; LoRA and full fine-tuning change it in place
    mitigations: list[Mitigation]
    calibrating: bool
    sink: MlflowSink | None

    def scoring(self) -> dict[str, Any]:
        """The label arguments of ``predict`` and the compare rows."""
        return {"labels": self.env.prep.labels, "label_ids": self.env.task.label_ids}

    def test(self) -> tuple[list[Example], list[Encoded]]:
        return self.env.prep.splits["test"], self.env.task.encoded["test"]


def open_run(
    cfg: Config, stages: Stages, events: Callable[[str], None] | None, *, resume: bool
) -> Run:
    """The run folder and its resolved config, the prepared data, the checks that fail
    on the config before anything slow, and the base model on its device."""
    say = events or (lambda _msg: None)
    dist = current().using(cfg.train.parallel)
    if dist.world > 1:
        check_distributed(cfg, stages)
        say = say if dist.is_main else (lambda _msg: None)
    config_yaml = dump_config(cfg)
    if dist.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.resolved.yaml").write_text(config_yaml)
    torch.manual_seed(cfg.train.seed)
    with dist.main_first():  # rank 0 prepares the data and fills the caches; the rest read
        env = setup(
            cfg, reuse_data=resume or not dist.is_main, threads=rank_threads(cfg, dist),
            device=dist.device,
        )  # fmt: skip
    say(f"data: {env.prep.card['format_note']}; splits {env.prep.card['splits']}")
    mitigations = forgetting.build_mitigations(cfg) if stages.train else []  # config errors first
    calibrating = stages.tuned_eval and assess.calibration_wanted(cfg, env.prep.labels)
    sink = _mlflow(cfg) if stages.train and dist.is_main else None
    lm = load_base(cfg.model.base, dropout=cfg.train.dropout)
    # FSDP moves each unit's shards to the device as it shards: the whole model never has
    # to fit one GPU (it stays in host memory until then)
    if not dist.fsdp:
        lm = lm.to(env.device)
    say(f"model: {cfg.model.base} on {env.device} ({env.precision}, {env.threads} threads)")
    if dist.world > 1:
        say(f"data parallel: {dist.world} processes ({dist.kind}, {dist.backend})")
    return Run(cfg, env, dist, say, config_yaml, lm, mitigations, calibrating, sink)


def header(run: Run) -> Results:
    """What was run, on what data and where: the parts known before any model call."""
    cfg, env = run.cfg, run.env
    return Results(
        tunelab_version=__version__,
        run=cfg.name,
        model=ModelSource.model_validate(describe_base(cfg.model.base)),
        method=Method(kind=cfg.method.kind, head=cfg.method.head),
        data=DataCard.model_validate(env.prep.card),
        environment=Environment(torch=torch.__version__, python=platform.python_version(),
                                device=str(env.device), precision=env.precision,
                                threads=env.threads),
    )  # fmt: skip


def base_eval(run: Run) -> tuple[Predictions, Evaluation]:
    """The base model zero-shot on the test split (its predictions are reused by compare)."""
    env = run.env
    examples, items = run.test()
    run.say(f"evaluating the base model zero-shot on {len(items)} test examples")
    pred = predict(TaskModel(run.lm, "lm"), env.tokenizer, examples, items, env.ev,
                   **run.scoring())  # fmt: skip
    return pred, Evaluation.model_validate(score(pred, examples, env.ev, labels=env.prep.labels))


def base_compare_rows(
    run: Run, base_pred: Predictions | None
) -> tuple[list[CompareRow], list[str]]:
    """The base rows of the compare table (zero-shot, each k-shot), and the k skipped."""
    env = run.env
    return assess.base_rows(
        run.cfg, TaskModel(run.lm, "lm"), env.tokenizer, env.prep.splits, run.test()[1],
        env.ev, **run.scoring(), base_pred=base_pred, say=run.say,
    )  # fmt: skip


@dataclass
class BaseRetention:
    """The retention suite and the base model's scores on it."""

    suite: SuiteSettings
    probes: list[Probe]
    measurement: Measurement
    cached: bool


def base_retention(run: Run) -> BaseRetention:
    cfg, tokenizer = run.cfg, run.env.tokenizer
    suite = forgetting.suite_settings(cfg, run.env.precision)
    probes = forgetting.build_probes(cfg, tokenizer, suite, cfg.run_dir / "forgetting")
    run.say(f"retention suite: {len(probes)} probes on the base model")
    measurement, cached = forgetting.base_measurement(
        cfg, TaskModel(run.lm, "lm"), tokenizer, probes, suite
    )
    if cached:
        run.say("retention of the base model: cached")
    return BaseRetention(suite, probes, measurement, cached)


def start_on_device(run: Run) -> TaskModel:
    model = start_model(run.cfg, run.lm, run.env.task)
    return model if run.dist.fsdp else model.to(run.env.device)


def parameter_counts(model: TaskModel) -> tuple[int, int]:
    """(trainable, total) parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def train_stage(
    run: Run, model: TaskModel, *, resume: bool, progress: Progress | None
) -> tuple[TrainState, list[tuple[float, float]], MetricsLog]:
    """The loop, with the mitigations and the val task metrics; returns its final state,
    each rank's (peak RSS, held MiB) and the metrics log (closed by write_outputs)."""
    cfg, env, dist, run_dir = run.cfg, run.env, run.dist, run.cfg.run_dir
    tokenizer, precision, task = env.tokenizer, env.precision, env.task
    mitigations = run.mitigations
    progress = progress if dist.is_main else None
    log = MetricsLog(run_dir, tensorboard=cfg.tracking.tensorboard and dist.is_main,
                     sinks=(run.sink,) if run.sink else ())  # fmt: skip
    if run.sink is not None:
        run.sink.params(cfg.model_dump(mode="json"))
    run.say(f"training on {len(task.encoded['train'])} examples")
    val = val_subset(task.encoded["val"], cfg.train.val_max_examples, cfg.train.seed)
    state = train(
        model,
        task.encoded["train"],
        val,
        loop_settings(cfg, precision, tokenizer.pad_token_id),
        checkpoints=run_dir / "checkpoints",
        config_yaml=run.config_yaml,
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
    return state, memory, log


def save(
    run: Run, model: TaskModel, state: TrainState, memory: list[tuple[float, float]]
) -> tuple[TaskModel, Training, Mitigations | None]:
    """The best checkpoint into ``model`` and saved to ``model/`` with the files the
    mitigations add; what training did and what the mitigations found."""
    cfg, dist, run_dir = run.cfg, run.dist, run.cfg.run_dir
    if dist.fsdp:  # rank 0 assembles the best model unsharded, in host memory, to save it
        model = start_model(cfg, load_base(cfg.model.base, dropout=cfg.train.dropout), run.env.task)
    best = read_pointer(run_dir / "checkpoints").get("best")
    if best:
        model.load_trainable_state(load_weights(run_dir / "checkpoints" / best))
    staged = run_dir / "forgetting" / "model-files"  # files mitigations add to model/
    shutil.rmtree(staged, ignore_errors=True)  # none left over from an earlier attempt
    facts: dict[str, Any] = {}
    for m in run.mitigations:
        facts.update(m.finish(model, staged))
    training = Training(
        steps=state.step,
        stopped=state.stopped,
        best_step=state.best_step,
        best_val_loss=state.best_val,
        tokens=state.tokens,
        seconds=round(state.elapsed, 1),
        tokens_per_second=round(state.tokens / max(state.elapsed, 1e-9), 1),
        skipped_steps=state.skipped,
        processes=dist.world,
        held_mb=state.held_mb,  # parameters + gradients + optimizer state (rank 0)
    )
    if dist.world > 1:
        training.parallel = dist.kind
        training.peak_rss_mb_per_rank = [rss for rss, _ in memory]
        training.held_mb_per_rank = [held for _, held in memory]
    used = [m.name for m in run.mitigations]
    save_trained(model, run.env.tokenizer, run_dir / "model", model_info(cfg, run.env.prep))
    for file in sorted(staged.glob("*")) if staged.is_dir() else []:
        shutil.copy2(file, run_dir / "model" / file.name)
    run.say(f"best checkpoint: {best} (val loss {state.best_val:.4f}); model saved")
    return model, training, Mitigations(used=used, facts=facts) if used else None


def tuned_eval(run: Run, model: TaskModel) -> tuple[Predictions, Evaluation, Calibration | None]:
    """The fine-tuned model on test, its confidences at the temperature fitted on val
    (saved with the model) when the task is calibrated."""
    cfg, env, run_dir = run.cfg, run.env, run.cfg.run_dir
    examples, items = run.test()
    run.say(f"evaluating the fine-tuned model on {len(items)} test examples")
    pred = predict(model, env.tokenizer, examples, items, env.ev, **run.scoring())
    calibration = None
    if run.calibrating and env.task.encoded["val"]:
        run.say("calibration: fitting a temperature on the val split")
        calibration = assess.calibrate(
            cfg, model, env.tokenizer, (env.prep.splits["val"], env.task.encoded["val"]), pred,
            items, env.ev, labels=env.prep.labels or [], label_ids=env.task.label_ids or [],
        )  # fmt: skip
        if (run_dir / "model").is_dir():
            save_temperature(run_dir / "model", calibration.to_json())
    temperature = calibration.temperature if calibration else 1.0
    tuned = score(pred, examples, env.ev, labels=env.prep.labels, temperature=temperature)
    return pred, Evaluation.model_validate(tuned), calibration


def tuned_compare(
    run: Run, model: TaskModel, tuned_pred: Predictions, rows: list[CompareRow],
    skipped: list[str],
) -> CompareTable:  # fmt: skip
    """The fine-tuned row after the base rows: the whole compare table."""
    env = run.env
    tuned = assess.tuned_row(run.cfg, model, env.tokenizer, *run.test(), env.ev,
                             **run.scoring(), tuned_pred=tuned_pred)  # fmt: skip
    return assess.compare_table([*rows, tuned], env.prep.labels is not None, skipped)


def tuned_retention(run: Run, model: TaskModel, base: BaseRetention) -> Retention:
    """The fine-tuned model on the retention suite against the base (also forgetting.json)."""
    run.say("retention suite on the fine-tuned model")
    report = forgetting.tuned_report(
        run.cfg, model, run.env.tokenizer, base.probes, base.suite, base.measurement
    )
    report.base_cached = base.cached
    write_json(run.cfg.run_dir / "forgetting.json", report.to_json())
    return report


def write_outputs(run: Run, results: Results, log: MetricsLog | None, started: float) -> Results:
    """``results.json``, the report and the summaries; then the retention floor."""
    results.wall_seconds = round(time.perf_counter() - started, 1)
    results.peak_rss_mb = peak_rss_mb()
    write_results(run.cfg.run_dir / "results.json", results)
    finish_outputs(run.cfg, results, log, run.sink)
    run.dist.close()
    if results.forgetting is not None:
        forgetting.check_retention(results.forgetting, run.cfg, run.cfg.run_dir)
    return results


# ---- helpers -----------------------------------------------------------------------------


def val_subset(items: list[Encoded], cap: int | None, seed: int) -> list[Encoded]:
    if cap is None or len(items) <= cap:
        return items
    idx = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:cap]
    return [items[i] for i in sorted(idx.tolist())]


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
    cfg: Config, results: Results, log: MetricsLog | None, sink: MlflowSink | None
) -> None:
    """After ``results.json``: the report, the summary scalars, the MLflow artifacts."""
    run_dir = cfg.run_dir
    if cfg.eval.report:
        build_report(run_dir)
    summary = final_scalars(results)
    step = results.training.steps if results.training else 0
    if log is not None:
        log.scalars(summary, step)
        log.close()
    if sink is not None:
        if log is None:
            sink.scalars(summary, step)
        for name in ("results.json", "report.html", "config.resolved.yaml"):
            sink.artifact(run_dir / name)
        sink.close()
