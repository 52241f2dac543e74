"""Experiment tracking beyond ``metrics.jsonl``: MLflow when the user has it installed.

TensorBoard event files are written by :class:`tunelab.training.metrics_log.MetricsLog`
(every scalar of every log line) and, at the end of a run, by :func:`log_summary` (every
scalar of ``results.json``). MLflow is an optional extra (``pip install tunelab[mlflow]``):
:class:`MlflowSink` receives the same scalars, the config as parameters and the run's
report and results as artifacts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.results import Results

__all__ = ["MlflowSink", "final_scalars", "flatten", "open_mlflow"]


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``("a.b.c", leaf)`` pairs of a nested dict (lists are leaves)."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def final_scalars(results: Results) -> dict[str, float]:
    """Every number of ``results.json`` worth a chart, under slash-separated names:
    ``test/base/accuracy``, ``compare/base 4-shot/accuracy``, ``calibration/after/ece``,
    ``forgetting/retention_score``, ``training/tokens_per_second``..."""
    out: dict[str, float] = {}

    def put(prefix: str, tree: dict[str, Any]) -> None:
        for key, value in flatten(tree):
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}/{key.replace('.', '/')}"] = float(value)

    for side, part in (("base", results.base), ("tuned", results.tuned)):
        if part is not None:
            put(f"test/{side}", dict(part.metrics))
    for row in results.compare.rows if results.compare else []:
        put(f"compare/{row.name}", {**row.metrics, "prompt_tokens": row.prompt_tokens})
    cal = results.calibration
    if cal is not None:
        put("calibration", {"temperature": cal.temperature, "before": cal.before.to_json(),
                            "after": cal.after.to_json()})  # fmt: skip
    forgetting = results.forgetting
    if forgetting is not None:
        put("forgetting", {"retention_score": forgetting.retention_score})
        for name, p in forgetting.probes.items():
            put(f"forgetting/{name}", {"base": p.base, "tuned": p.tuned, "retention": p.retention})
    if results.training is not None:
        put("training", results.training.to_json())
    return out


class MlflowSink:
    """Forwards tunelab's scalars, parameters and artifacts to an active MLflow run."""

    def __init__(self, module: Any) -> None:
        self.mlflow = module

    def scalars(self, values: dict[str, float], step: int) -> None:
        clean = {_key(k): v for k, v in values.items()}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def params(self, config: dict[str, Any]) -> None:
        flat = {_key(k): str(v)[:500] for k, v in flatten(config)}
        self.mlflow.log_params(flat)

    def artifact(self, path: Path) -> None:
        if path.is_file():
            self.mlflow.log_artifact(str(path))

    def close(self) -> None:
        self.mlflow.end_run()


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / :`` and spaces only."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in name)


def open_mlflow(uri: str, experiment: str, run_name: str) -> MlflowSink:
    """Start an MLflow run; ``ConfigError`` with the install command when MLflow is absent."""
    try:
        mlflow = importlib.import_module("mlflow")
    except ImportError:
        raise ConfigError(
            "tracking.mlflow is true but MLflow is not installed",
            hint="pip install 'tunelab[mlflow]' (or set tracking.mlflow: false)",
        ) from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    mlflow.start_run(run_name=run_name)
    return MlflowSink(mlflow)
