"""One trial of a sweep: its sampled values, its config, its value on the validation split.

Pure helpers around a trial: what Optuna samples for each space entry, the config a trial
trains with, and the trial's objective read from its ``metrics.jsonl``. The study itself
(storage, resume, pruning) is in :mod:`tunelab.recipes.sweep.study`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from tunelab.config import Config, parse_config
from tunelab.config.schema import SearchParam
from tunelab.config.space import number_kind, resolve_key, set_dotted
from tunelab.data.prepare import Prepared
from tunelab.errors import ConfigError
from tunelab.evaluation.evaluate import default_metrics
from tunelab.evaluation.metrics import compute_metrics

__all__ = [
    "best_config",
    "best_of",
    "check_metric",
    "logged_values",
    "needs_own_data",
    "suggest",
    "trial_config",
]

Goal = Literal["minimize", "maximize"]


def suggest(trial: Any, key: str, param: SearchParam) -> Any:
    """The value of ``key`` for an Optuna ``trial``: an integer for integer fields."""
    if param.choices is not None:
        return trial.suggest_categorical(key, param.choices)
    assert param.low is not None and param.high is not None
    if number_kind(resolve_key(key, Config)) == "int":
        step = int(param.step) if param.step is not None else 1
        return trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)


def trial_config(cfg: Config, params: Mapping[str, Any], number: int, trials_dir: Path) -> Config:
    """``cfg`` with ``params`` set, named ``trial-NNN`` under ``trials_dir``. Trials are
    throwaway: no TensorBoard, MLflow or report; ``tunelab run best.yaml`` makes those."""
    data = cfg.model_dump(mode="json", exclude={"sweep"})
    data["name"], data["output_dir"] = f"trial-{number:03d}", str(trials_dir)
    for key, value in {"tracking.tensorboard": False, "tracking.mlflow": False,
                       "eval.report": False, **params}.items():  # fmt: skip
        set_dotted(data, key, value)
    return parse_config(data, source=f"trial {number}")


def best_config(cfg: Config, params: Mapping[str, Any]) -> Config:
    """The config ``tunelab run`` trains and assesses the winner with: ``cfg`` with the
    best ``params``, named ``<name>-best``, without the ``sweep`` section."""
    data = cfg.model_dump(mode="json", exclude={"sweep"})
    data["name"] = f"{cfg.name}-best"
    for key, value in params.items():
        set_dotted(data, key, value)
    return parse_config(data, source="best config")


def needs_own_data(cfg: Config) -> bool:
    """Whether trials prepare their own data: the space changes what preparation does."""
    assert cfg.sweep is not None
    return any(k.startswith("data.") or k == "model.base" for k in cfg.sweep.space)


def check_metric(cfg: Config, prep: Prepared) -> None:
    """``ConfigError`` unless training will log ``sweep.metric`` for this data: the metric
    names are those the validation scorer computes (``val_`` + each metric's outputs)."""
    assert cfg.sweep is not None
    metric = cfg.sweep.metric
    if metric == "val_loss":
        return
    chosen = cfg.eval.metrics
    names = default_metrics(prep.labels is not None) if chosen == "auto" else list(chosen)
    names = [str(n) for n in names if n != "perplexity"]  # the val scorer leaves it out
    # one dummy prediction gives every scalar key the metrics return, for this task's labels
    probe = prep.labels[0] if prep.labels else "a"
    out = compute_metrics(names, [probe], [probe], prep.labels)
    valid = ["val_loss"] + [f"val_{k}" for k, v in out.items() if isinstance(v, int | float)]
    if metric not in valid:
        raise ConfigError(
            f"sweep.metric '{metric}' is not logged during training for this data",
            hint=f"choose one of {', '.join(valid)} (from eval.metrics)",
        )


def logged_values(metrics_path: Path, metric: str) -> dict[int, float]:
    """``{step: value}`` of ``metric`` in a run's ``metrics.jsonl`` (validation lines)."""
    if not metrics_path.is_file():
        return {}
    values = {}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if isinstance(record.get(metric), int | float):
                values[int(record["step"])] = float(record[metric])
    return values


def best_of(values: Mapping[int, float], goal: Goal) -> tuple[int, float] | None:
    """``(step, value)`` of the best value (the earliest on ties), or None."""
    if not values:
        return None
    sign = 1.0 if goal == "minimize" else -1.0
    step = min(values, key=lambda s: (sign * values[s], s))
    return step, values[step]
