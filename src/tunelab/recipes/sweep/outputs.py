"""What a sweep leaves in ``<run>/sweep/``: the trials table, the best config, a summary.

Files:

    trials.csv / trials.json   one row per trial: number, state, value, best step, steps,
                               seconds, sampled params (and the error of a failed trial);
                               the JSON also names the metric and direction
    best.yaml                  the full config with the best params, ``name: <name>-best``,
                               no ``sweep`` section: ``tunelab run best.yaml`` assesses it
    summary.json               metric, direction, counts, the best trial, time spent
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.config import Config, dump_config
from tunelab.recipes.sweep.trials import Goal, best_config, best_of
from tunelab.results import write_json

__all__ = ["INTERRUPTED", "best_row", "trial_row", "write_outputs"]

INTERRUPTED = "interrupted"  # user attr of a trial stopped by Ctrl-C or a crash (re-run)
_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
           "WAITING": "waiting"}  # fmt: skip


def trial_row(trial: Any, goal: Goal) -> dict[str, Any]:
    """One table row of an Optuna ``FrozenTrial``. A pruned trial's value is its best
    intermediate value (the one the pruner judged), a complete trial's its objective."""
    attrs = trial.user_attrs
    state = _STATES.get(trial.state.name, trial.state.name.lower())
    if state == "failed" and attrs.get(INTERRUPTED):
        state = INTERRUPTED
    best = best_of(dict(trial.intermediate_values), goal)
    value = trial.value if trial.state.name == "COMPLETE" else (best[1] if best else None)
    row: dict[str, Any] = {
        "number": trial.number,
        "state": state,
        "value": value,
        "best_step": attrs.get("best_step", best[0] if best else None),
        "steps": attrs.get("steps"),
        "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
        "params": dict(trial.params),
    }
    if "error" in attrs:
        row["error"] = attrs["error"]
    if "retry_of" in attrs:
        row["retry_of"] = attrs["retry_of"]
    return row


def best_row(rows: Sequence[dict[str, Any]], goal: Goal) -> dict[str, Any] | None:
    """The complete trial with the best value (the lowest number on ties)."""
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not done:
        return None
    sign = 1.0 if goal == "minimize" else -1.0
    return min(done, key=lambda r: (sign * r["value"], r["number"]))


def write_outputs(
    root: Path, cfg: Config, rows: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """``trials.csv``, ``trials.json``, ``summary.json`` and (once a trial completed)
    ``best.yaml`` in ``root``. Rewritten after every trial, so a crash leaves them current."""
    assert cfg.sweep is not None
    head = {"metric": summary["metric"], "direction": summary["direction"]}
    write_json(root / "trials.json", {**head, "trials": list(rows)})
    (root / "trials.csv").write_text(_csv(rows, list(cfg.sweep.space)), encoding="utf-8")
    best = summary.get("best")
    if best is not None:
        winner = best_config(cfg, best["params"])
        header = (
            f"# The best of {summary['counts']['total']} trials of sweep '{cfg.name}': trial "
            f"{best['trial']}, {summary['metric']} {best['value']:.6g} at step "
            f"{best['best_step']}\n# (chosen on the validation split). Train it again and "
            f"assess it on the test split with:\n#   tunelab run {root / 'best.yaml'}\n"
        )
        (root / "best.yaml").write_text(header + dump_config(winner), encoding="utf-8")
    write_json(root / "summary.json", summary)


def _csv(rows: Sequence[dict[str, Any]], keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "best_step", "steps", "seconds", *keys, "error"])
    for r in rows:
        cells = [r["value"], r["best_step"], r["steps"], r["seconds"]]
        cells += [r["params"].get(k) for k in keys]
        writer.writerow([r["number"], r["state"], *map(_cell, cells), r.get("error", "")])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)
