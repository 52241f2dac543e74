"""Builders: the config turned into the plain values components take.

Only these functions (and the recipes that call them) read a :class:`Config`; the data
pipeline, the training loop and the evaluator receive the dataclasses built here.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import Config
from tunelab.data.ingest import CleanSpec, TaskSpec
from tunelab.data.prepare import AnonymizeSpec, DataSpec, SplitSpec
from tunelab.evaluation.evaluate import EvalSettings, default_metrics
from tunelab.training.loop import LoopSettings

__all__ = ["data_spec", "eval_settings", "loop_settings"]


def data_spec(cfg: Config) -> DataSpec:
    d = cfg.data
    if d.tasks:
        tasks = tuple(_task_spec(t.name, t, t.weight, t.max_rows) for t in d.tasks)
    else:
        tasks = (_task_spec("data", d, 1.0, d.max_rows),)
    c, s, a = d.clean, d.split, d.anonymize
    return DataSpec(
        tasks=tasks,
        clean=CleanSpec(
            steps=tuple(c.steps), min_tokens=c.min_tokens, max_tokens=c.max_tokens,
            dedupe=c.dedupe, near_threshold=c.near_dedupe, conflicts=c.conflicts,
        ),
        anonymize=None if a is None else AnonymizeSpec(
            policy=a.policy, types=tuple(a.types) if a.types else None, name_model=a.name_model
        ),
        split=SplitSpec(
            method=s.method, val=s.val, test=s.test, group_by=s.group_by, column=s.column,
            seed=s.seed, leakage=s.leakage,
        ),
        validation=d.validation,
        max_rejected=d.max_rejected,
        caps={"train": d.max_train, "val": d.max_val, "test": d.max_test},
        mixing=d.mixing,
        temperature=d.temperature,
    )  # fmt: skip


def _task_spec(name: str, t: Any, weight: float, max_rows: int | None) -> TaskSpec:
    """A TaskSpec from ``data`` or one of ``data.tasks`` (the fields they share)."""
    templates = [t.template] if isinstance(t.template, str) else list(t.template or [])
    return TaskSpec(
        name=name, source=t.source, format=t.format, columns=dict(t.columns),
        labels=tuple(t.labels) if t.labels else None, label_words=dict(t.label_words),
        templates=tuple(templates), system_prompt=t.system_prompt, weight=weight,
        max_rows=max_rows,
    )  # fmt: skip


def loop_settings(cfg: Config, precision: str, pad_id: int) -> LoopSettings:
    """The ``train`` section as it is (each knob declared once, in the schema) and what
    the run resolved: the precision, the pad id, the packed row length."""
    return LoopSettings(cfg.train, precision, pad_id, row_tokens=cfg.model.max_length)


def eval_settings(cfg: Config, precision: str, pad_id: int, classification: bool) -> EvalSettings:
    metrics = cfg.eval.metrics
    return EvalSettings(
        metrics=default_metrics(classification) if metrics == "auto" else list(metrics),
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        precision=precision,
        pad_id=pad_id,
        samples=cfg.eval.samples,
        bootstrap=cfg.eval.bootstrap,
        seed=cfg.train.seed,
    )
