"""The verbs that assess a model outside a run: ``tunelab eval``, ``compare`` and
``calibrate``, each on the base model or a saved fine-tuned one, built on the run recipe's
``setup``. Their results go to ``<run>/<verb>.json`` and into ``results.json`` (and the
report) when the run has one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config import Config
from tunelab.errors import ConfigError
from tunelab.evaluation.evaluate import evaluate, predict
from tunelab.models.loading import load_base
from tunelab.models.saved import is_trained_folder, load_trained, read_temperature, save_temperature
from tunelab.models.task_model import TaskModel
from tunelab.recipes import assess
from tunelab.recipes.setup import setup
from tunelab.report import build_report, reliability_diagram
from tunelab.results import (
    Calibration,
    CompareTable,
    SplitEvaluation,
    read_results,
    write_json,
    write_results,
)

__all__ = ["calibrate_stage", "compare_stage", "evaluate_stage"]


def evaluate_stage(cfg: Config, model_path: Path | None, *, split: str = "test") -> SplitEvaluation:
    """Metrics of the base model (``model_path`` None) or a saved model on a split."""
    tokenizer, model = None, None
    if model_path is not None:
        model, tokenizer, _info = load_trained(model_path)
    env = setup(cfg, reuse_data=True, threads=cfg.eval.threads, tokenizer=tokenizer)
    if model is None:
        model = TaskModel(load_base(cfg.model.base), "lm")
    model = model.to(env.device)
    examples, items = env.prep.splits[split], env.task.encoded[split]
    result = evaluate(
        model, env.tokenizer, examples, items, env.ev,
        labels=env.prep.labels, label_ids=env.task.label_ids,
        temperature=read_temperature(model_path),
    )  # fmt: skip
    name = str(model_path) if model_path else cfg.model.base
    return SplitEvaluation.model_validate({**result, "model": name, "split": split})


def compare_stage(
    cfg: Config, model_path: Path | None, *, say: Callable[[str], None] = lambda _m: None
) -> CompareTable:
    """The compare table alone: base zero-/k-shot and, when there is one, the fine-tuned
    model (``model_path``, default the run's ``model/``). Saved as ``<run>/compare.json``
    and merged into ``results.json`` (and the report) when the run has one."""
    env = setup(cfg, reuse_data=True, threads=cfg.eval.threads)
    prep, task = env.prep, env.task
    scoring: dict[str, Any] = {"labels": prep.labels, "label_ids": task.label_ids}
    test = task.encoded["test"]
    base = TaskModel(load_base(cfg.model.base), "lm").to(env.device)
    rows, skipped = assess.base_rows(
        cfg, base, env.tokenizer, prep.splits, test, env.ev, **scoring, say=say
    )  # fmt: skip
    del base
    folder = model_path if model_path is not None else cfg.run_dir / "model"
    if is_trained_folder(folder) or is_trained_folder(folder / "model"):
        say(f"compare: fine-tuned model {folder}")
        tuned, _tok, _info = load_trained(folder)
        rows.append(assess.tuned_row(cfg, tuned.to(env.device), env.tokenizer,
                                     prep.splits["test"], test, env.ev, **scoring))  # fmt: skip
    table = assess.compare_table(rows, prep.labels is not None, skipped)
    _merge_results(cfg, compare=table)
    return table


def calibrate_stage(cfg: Config, model_path: Path | None) -> Calibration:
    """Fit the temperature of a fine-tuned model (``model_path``, default the run's
    ``model/``) on val, report ECE/Brier/NLL before and after on test, save the temperature
    with the model and draw ``<run>/reliability.png``."""
    folder = model_path if model_path is not None else cfg.run_dir
    model, tokenizer, _info = load_trained(folder)
    env = setup(cfg, reuse_data=True, threads=cfg.eval.threads, tokenizer=tokenizer)
    prep, task = env.prep, env.task
    if prep.labels is None or task.label_ids is None:
        raise ConfigError(
            "calibration needs a task scored by label likelihood (classification labels)",
            hint="generation tasks have no class probabilities to calibrate",
        )
    model = model.to(env.device)
    test = task.encoded["test"]
    pred = predict(model, tokenizer, prep.splits["test"], test, env.ev, labels=prep.labels,
                   label_ids=task.label_ids)  # fmt: skip
    report = assess.calibrate(
        cfg, model, tokenizer, (prep.splits["val"], task.encoded["val"]), pred, test, env.ev,
        labels=prep.labels, label_ids=task.label_ids,
    )  # fmt: skip
    model_dir = folder / "model" if is_trained_folder(folder / "model") else folder
    save_temperature(model_dir, report.to_json())
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "reliability.png").write_bytes(reliability_diagram(report))
    _merge_results(cfg, calibration=report)
    return report


def _merge_results(
    cfg: Config, *, compare: CompareTable | None = None, calibration: Calibration | None = None
) -> None:
    """``<run>/compare.json`` or ``<run>/calibration.json``; and the part in ``results.json``,
    plus the report, when the run has them (an older results.json is rewritten in this
    version's layout)."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("compare.json", compare), ("calibration.json", calibration)):
        if part is not None:
            write_json(run_dir / name, part.to_json())
    path = run_dir / "results.json"
    if path.is_file():
        results = read_results(path)
        results.compare = compare or results.compare
        results.calibration = calibration or results.calibration
        write_results(path, results)
        if cfg.eval.report:
            build_report(run_dir)
