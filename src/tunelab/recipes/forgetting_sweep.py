"""The WiSE sweep of a finished run: mixes of its best checkpoint with its start, each
scored on the task and on the retention suite, and one chosen by a stated rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config import Config
from tunelab.errors import ConfigError
from tunelab.evaluation.evaluate import evaluate
from tunelab.forgetting.mitigations.wise import interpolate
from tunelab.models.loading import load_base
from tunelab.models.saved import save_trained
from tunelab.models.task_model import TaskModel
from tunelab.recipes import forgetting
from tunelab.recipes.setup import model_info, setup, start_model
from tunelab.results import write_json
from tunelab.training.checkpoint import load_weights, read_pointer

__all__ = ["choose_alpha", "task_metric", "wise_sweep"]


def wise_sweep(
    cfg: Config, *, out: Path | None, save: bool, say: Callable[[str], Any]
) -> dict[str, Any]:
    """Score every alpha of ``forgetting.sweep.alphas``, choose one (:func:`choose_alpha`),
    write the table (``out`` or ``<run>/forgetting_sweep.json``) and return it; ``save``:
    also save the chosen mix to ``<run>/model-wise``."""
    best = read_pointer(cfg.run_dir / "checkpoints").get("best")
    if not best:
        raise ConfigError(
            f"no trained checkpoint in {cfg.run_dir / 'checkpoints'}",
            hint="run `tunelab run CONFIG` (or `tunelab train`) first",
        )
    env = setup(cfg, reuse_data=True, threads=cfg.eval.threads)
    lm = load_base(cfg.model.base).to(env.device)
    settings = forgetting.suite_settings(cfg, env.precision)
    probes = forgetting.build_probes(cfg, env.tokenizer, settings, cfg.run_dir / "forgetting")
    base, _cached = forgetting.base_measurement(
        cfg, TaskModel(lm, "lm"), env.tokenizer, probes, settings
    )
    model = start_model(cfg, lm, env.task).to(env.device)
    anchor = {k: v.clone() for k, v in model.trainable_state().items()}
    trained = load_weights(cfg.run_dir / "checkpoints" / str(best))
    test = env.task.encoded["test"]
    rows = []
    for alpha in cfg.forgetting.sweep.alphas:
        model.load_trainable_state(trained)
        interpolate(model, anchor, alpha)
        result = evaluate(
            model, env.tokenizer, env.prep.splits["test"], test, env.ev,
            labels=env.prep.labels, label_ids=env.task.label_ids,
        )  # fmt: skip
        report = forgetting.tuned_report(cfg, model, env.tokenizer, probes, settings, base)
        probe_retention = {k: p.retention for k, p in report.probes.items()}
        rows.append({"alpha": alpha, "metrics": result["metrics"],
                     "retention_score": report.retention_score,
                     "retention_ci95": list(report.retention_ci95),
                     "probes": probe_retention})  # fmt: skip
        name, value = task_metric(result["metrics"])
        say(f"alpha {alpha}: {name} {value:.4f}, retention {report.retention_score}")
    chosen = choose_alpha(rows, cfg.forgetting.sweep.min_retention)
    summary = {"best_checkpoint": best, "min_retention": cfg.forgetting.sweep.min_retention,
               "chosen_alpha": chosen["alpha"], "rows": rows}  # fmt: skip
    write_json(out or cfg.run_dir / "forgetting_sweep.json", summary)
    if save:
        model.load_trainable_state(trained)
        interpolate(model, anchor, chosen["alpha"])
        info = model_info(cfg, env.prep) | {"wise_alpha": chosen["alpha"]}
        save_trained(model, env.tokenizer, cfg.run_dir / "model-wise", info)
    return summary


def task_metric(metrics: dict[str, Any]) -> tuple[str, float]:
    """The metric the sweep optimises: accuracy when there is one, else the first number."""
    for key in ("accuracy", "f1", "exact_match", "rougeL", "bleu"):
        if isinstance(metrics.get(key), int | float):
            return key, float(metrics[key])
    for key, value in metrics.items():
        if isinstance(value, int | float) and key != "perplexity":
            return key, float(value)
    raise ConfigError("the sweep found no task metric", hint="set eval.metrics")


def choose_alpha(rows: list[dict[str, Any]], min_retention: float) -> dict[str, Any]:
    """Best task metric among rows with retention >= ``min_retention`` (ties: the higher
    retention); if no row qualifies, the row with the highest retention."""

    def retention(row: dict[str, Any]) -> float:
        return row["retention_score"] if row["retention_score"] is not None else -1.0

    ok = [r for r in rows if retention(r) >= min_retention]
    if ok:
        return max(ok, key=lambda r: (task_metric(r["metrics"])[1], retention(r)))
    return max(rows, key=retention)
