"""``tunelab sweep``: an Optuna study over ``sweep.space``, scored on the validation split.

Tune on validation, assess on test. Every trial only trains (no base eval, no test eval,
no calibration, no retention suite), so no trial ever scores the test split; its value is
``sweep.metric`` on the validation split, the best over its validations. The winner is
written as ``best.yaml``, which ``tunelab run`` trains and assesses on test once.

    <run>/sweep/
      study.db              Optuna's SQLite storage: running the sweep again continues it
      config.resolved.yaml  the config the study was started with (a changed one is refused)
      data/                 prepared once for every trial (unless the space changes data)
      trials/trial-NNN/     each trial's run folder (metrics.jsonl, config); checkpoints are
                            deleted when a trial ends, ``model/`` kept for the best trial only
      trials.csv, trials.json, best.yaml, summary.json   (see :mod:`tunelab.recipes.sweep.outputs`)

Pruning: at each validation the trial reports its metric to Optuna (from the training
loop's progress callback) and raises ``TrialPruned`` when the pruner says so; the loop
stops there. A crash or Ctrl-C leaves a trial RUNNING or failed: the next start marks it
``interrupted`` (not counted) and queues its values again under a new number.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, Trial, TrialState

from tunelab.config import Config, dump_config
from tunelab.config.schema import SearchConfig
from tunelab.data.prepare import Prepared
from tunelab.errors import ConfigError, TrainingError
from tunelab.recipes.run import Stages, run_pipeline
from tunelab.recipes.setup import prepare_stage
from tunelab.recipes.sweep.outputs import INTERRUPTED, best_row, trial_row, write_outputs
from tunelab.recipes.sweep.trials import (
    best_of,
    check_metric,
    logged_values,
    needs_own_data,
    suggest,
    trial_config,
)
from tunelab.report.tracking import flatten

__all__ = ["TRAIN_ONLY", "run_sweep", "sweep_dir"]

TRAIN_ONLY = Stages(base_eval=False, train=True, tuned_eval=False)
# what may change when a sweep is continued: none of it changes a trial's result
_MAY_CHANGE = {"sweep.trials", "sweep.timeout_minutes", "train.threads", "eval.threads"}

Progress = Callable[[dict[str, Any]], None]


class _TrialFailed(Exception):
    """A trial that could not train (diverged, out of memory, sampled values the schema
    rejects together): recorded as failed, the study goes on."""


def sweep_dir(cfg: Config) -> Path:
    return cfg.run_dir / "sweep"


def run_sweep(
    cfg: Config,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    events: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the study of ``cfg.sweep`` until it holds ``sweep.trials``
    finished trials; return ``summary.json``'s content. ``progress`` gets the training
    loop's progress dicts with a ``trial`` number added; ``events`` one line per event."""
    if cfg.sweep is None:
        raise ConfigError(
            "the config has no `sweep:` section: nothing to search",
            hint="add `sweep: {trials: N, space: {train.lr: {low: 1.0e-5, high: 1.0e-3, "
            "log: true}}}` (docs/sweep.md, examples/sweep.yaml)",
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "a sweep runs its trials one after another in one process, not under a "
            "distributed launch",
            hint="run `tunelab sweep CONFIG` without accelerate launch / torchrun",
        )
    s, say = cfg.sweep, events or (lambda _msg: None)
    started = time.perf_counter()
    root = sweep_dir(cfg)
    db = root / "study.db"
    existing = db.is_file()
    if resume and not existing:
        raise ConfigError(f"no sweep to continue in {root}", hint="start it without --resume")
    root.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, root, existing)
    shared = None
    if not needs_own_data(cfg):
        shared = prepare_stage(cfg, root, reuse=existing)
        check_metric(cfg, shared)
        say(f"data: prepared once for every trial; splits {shared.card['splits']}")

    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    study = optuna.create_study(
        storage=storage, study_name=cfg.name, direction=s.goal, load_if_exists=True
    )
    _requeue_interrupted(study, storage, say)
    # a seed that moves on with the study: a continued sweep must not redraw the same values
    seed = (s.seed if s.seed is not None else cfg.train.seed) + len(study.get_trials())
    study.sampler, study.pruner = _sampler(s, seed), _pruner(s)

    remaining = s.trials - _finished(study)
    try:
        if remaining > 0:
            say(f"study '{cfg.name}': {_finished(study)} trials held, {remaining} to run "
                f"({s.goal} {s.metric} on the validation split)")  # fmt: skip
            study.optimize(
                _Objective(cfg, root, shared, progress, say),
                n_trials=remaining,
                timeout=s.timeout_minutes * 60 if s.timeout_minutes else None,
                catch=(_TrialFailed,),
                callbacks=[lambda st, t: _after_trial(cfg, root, st, t, say)],
                gc_after_trial=True,
            )
        else:
            say(f"study '{cfg.name}' already holds {s.trials} finished trials")
    finally:
        summary = _summary(cfg, root, study, time.perf_counter() - started)
    return summary


class _Objective:
    """One trial: sample, build its config, train it, return its best validation value."""

    def __init__(
        self,
        cfg: Config,
        root: Path,
        shared: Prepared | None,
        progress: Progress | None,
        say: Callable[[str], None],
    ) -> None:
        assert cfg.sweep is not None
        self.cfg, self.sweep, self.root, self.shared = cfg, cfg.sweep, root, shared
        self.progress, self.say = progress, say

    def __call__(self, trial: Trial) -> float:
        s = self.sweep
        params = {key: suggest(trial, key, p) for key, p in s.space.items()}
        self.say(f"trial {trial.number:03d}: {format_params(params)}")
        try:
            tcfg = trial_config(self.cfg, params, trial.number, self.root / "trials")
        except ConfigError as exc:
            raise _fail(trial, f"sampled values rejected: {exc}") from exc
        folder = tcfg.run_dir
        shutil.rmtree(folder, ignore_errors=True)  # a number is never reused by a study
        folder.mkdir(parents=True)
        if self.shared is not None:
            _link(self.shared.folder, folder / "data")
        watch = _Watch(trial, s.metric, folder / "metrics.jsonl", self.progress)
        try:
            # resume on a fresh folder: reuse the data linked there, train from step 0
            run_pipeline(tcfg, stages=TRAIN_ONLY, resume=self.shared is not None,
                         progress=watch)  # fmt: skip
        except (TrainingError, torch.cuda.OutOfMemoryError) as exc:
            raise _fail(trial, str(exc).splitlines()[0]) from exc
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            raise
        finally:
            trial.set_user_attr("steps", watch.step)
        found = best_of(logged_values(folder / "metrics.jsonl", s.metric), s.goal)
        if found is None:
            raise ConfigError(
                f"trial {trial.number} logged no {s.metric} at its validations",
                hint="check sweep.metric against the val_ keys of its metrics.jsonl",
            )
        trial.set_user_attr("best_step", found[0])
        return found[1]


class _Watch:
    """The training loop's progress callback for one trial: forwards every dict, and at
    each validation reports the metric to Optuna and stops a trial the pruner prunes."""

    def __init__(
        self, trial: Trial, metric: str, metrics_path: Path, progress: Progress | None
    ) -> None:
        self.trial, self.metric, self.metrics_path = trial, metric, metrics_path
        self.progress = progress
        self.step = 0

    def __call__(self, info: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress({"trial": self.trial.number, **info})
        self.step = int(info["step"])
        if "loss" in info or info.get("val_loss") is None:
            return  # a training step; validations come without "loss"
        if self.metric == "val_loss":
            value: float | None = float(info["val_loss"])
        else:  # the loop wrote this validation's line (task metrics too) just before
            value = logged_values(self.metrics_path, self.metric).get(self.step)
        if value is None:
            return  # task metrics run every eval.val_every steps only
        self.trial.report(value, self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {self.step}: {self.metric} {value:.4g}")


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _fail(trial: Trial, message: str) -> _TrialFailed:
    trial.set_user_attr("error", message)
    return _TrialFailed(message)


def _link(data: Path, target: Path) -> None:
    """``target`` -> the shared prepared data: a relative symlink, a copy where links fail."""
    try:
        os.symlink(os.path.relpath(data, target.parent), target, target_is_directory=True)
    except OSError:
        shutil.copytree(data, target)


def _sampler(s: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=s.startup_trials, seed=seed)


def _pruner(s: SearchConfig) -> optuna.pruners.BasePruner:
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_steps
    )


def _finished(study: optuna.Study) -> int:
    """Trials that count toward ``sweep.trials``: all ended ones but the interrupted."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))
    )


def _requeue_interrupted(
    study: optuna.Study, storage: optuna.storages.BaseStorage, say: Callable[[str], None]
) -> None:
    """Trials left RUNNING by a crashed process become failed and ``interrupted``; every
    interrupted trial's values are queued once more (one process runs a sweep at a time)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    again = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)
             and t.number not in retried and t.params]  # fmt: skip
    for t in again:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    if again:
        numbers = ", ".join(str(t.number) for t in again)
        say(f"interrupted trial(s) {numbers}: marked failed, their values queued again")


def _after_trial(
    cfg: Config, root: Path, study: optuna.Study, trial: FrozenTrial, say: Callable[[str], None]
) -> None:
    assert cfg.sweep is not None
    summary = _summary(cfg, root, study, None)
    best = summary["best"]
    row = trial_row(trial, cfg.sweep.goal)
    metric, n = cfg.sweep.metric, f"trial {trial.number:03d}"
    if row["state"] == "complete":
        mark = " (best so far)" if best and best["trial"] == trial.number else ""
        say(f"{n}: {metric} {row['value']:.4f} at step {row['best_step']}, "
            f"{row['seconds']:.0f}s{mark}")  # fmt: skip
    elif row["state"] == "pruned":
        value = "" if row["value"] is None else f" (best {metric} {row['value']:.4f})"
        say(f"{n}: pruned at step {row['steps']}{value}, {row['seconds']:.0f}s")
    else:
        say(f"{n}: {row['state']}: {row.get('error', '')}")


def _summary(cfg: Config, root: Path, study: optuna.Study, wall: float | None) -> dict[str, Any]:
    """Write every output from the study's trials; return ``summary.json``'s content."""
    s = cfg.sweep
    assert s is not None
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t, s.goal) for t in trials if t.state != TrialState.WAITING]
    best = best_row(rows, s.goal)
    _tidy(root / "trials", keep=f"trial-{best['number']:03d}" if best else None)
    counts = {state: sum(r["state"] == state for r in rows)
              for state in ("complete", "pruned", "failed", INTERRUPTED)}  # fmt: skip
    counts["total"] = counts["complete"] + counts["pruned"] + counts["failed"]
    summary: dict[str, Any] = {
        "study": cfg.name,
        "storage": f"sqlite:///{root / 'study.db'}",
        "metric": s.metric,
        "direction": s.goal,
        "split": "val",
        "trials_requested": s.trials,
        "counts": counts,
        "finished": counts["total"] >= s.trials,
        "best": None,
        "trial_seconds": round(sum(r["seconds"] or 0.0 for r in rows), 1),
    }
    if wall is not None:
        summary["wall_seconds"] = round(wall, 1)
    if best is not None:
        summary["best"] = {
            "trial": best["number"],
            "value": best["value"],
            "best_step": best["best_step"],
            "params": best["params"],
            "folder": str(root / "trials" / f"trial-{best['number']:03d}"),
            "config": str(root / "best.yaml"),
        }
    write_outputs(root, cfg, rows, summary)
    summary["rows"] = rows  # for the CLI's table; trials.json holds them on disk
    return summary


def _tidy(trials_dir: Path, keep: str | None) -> None:
    """Delete the checkpoints of every trial folder (trials are never resumed) and every
    ``model/`` but the best trial's. Only called while no trial is running."""
    if not trials_dir.is_dir():
        return
    for folder in trials_dir.iterdir():
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        if folder.name != keep:
            shutil.rmtree(folder / "model", ignore_errors=True)


def _check_same_config(cfg: Config, root: Path, existing: bool) -> None:
    """Save the config a study starts with; refuse to continue it with another one."""
    path = root / "config.resolved.yaml"
    if existing and path.is_file():
        before = dict(flatten(yaml.safe_load(path.read_text(encoding="utf-8"))))
        now = dict(flatten(cfg.model_dump(mode="json")))
        changed = sorted(k for k in before.keys() | now.keys()
                         if before.get(k) != now.get(k) and k not in _MAY_CHANGE)  # fmt: skip
        if changed:
            raise ConfigError(
                f"the sweep in {root} was started with another config ({', '.join(changed)} "
                "differ); its trials could not be compared with new ones",
                hint="continue it with the same config (only sweep.trials and "
                "sweep.timeout_minutes may change), set another `name`, or delete the "
                "folder to start over",
            )
    path.write_text(dump_config(cfg), encoding="utf-8")
