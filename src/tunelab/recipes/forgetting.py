"""Forgetting in a run: build the probes and the mitigations from the config, measure.

The only module of ``tunelab.forgetting`` that reads the config. ``run`` calls
:func:`base_measurement` before training, :func:`mitigation_context` and
:func:`build_mitigations` for the loop, and :func:`tuned_report` after training;
``tunelab forgetting`` and ``tunelab forgetting sweep`` reuse the same pieces.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tunelab.config import Config
from tunelab.data.ingest import CleanSpec
from tunelab.data.prepare import DataSpec, Prepared, SplitSpec, prepare
from tunelab.data.tokenize import Encoded, PromptFormatter, encode
from tunelab.data.types import Example
from tunelab.errors import ForgettingError
from tunelab.forgetting.general import general_training_examples
from tunelab.forgetting.measure import (
    Measurement,
    base_key_parts,
    cached_base_measurement,
    measure,
)
from tunelab.forgetting.mitigations import Context, Mitigation
from tunelab.forgetting.mitigations import build_mitigations as _build
from tunelab.forgetting.probes import Probe, SuiteSettings, general_suite, user_probe
from tunelab.forgetting.report import compare
from tunelab.models.loading import model_fingerprint
from tunelab.models.task_model import TaskModel
from tunelab.results import Retention

__all__ = [
    "base_measurement",
    "build_mitigations",
    "build_probes",
    "check_retention",
    "lm_view",
    "mitigation_context",
    "suite_settings",
    "tuned_report",
]


def suite_settings(cfg: Config, precision: str) -> SuiteSettings:
    f = cfg.forgetting
    return SuiteSettings(
        max_examples=f.max_examples,
        max_length=cfg.model.max_length,
        max_new_tokens=f.max_new_tokens,
        batch_size=f.batch_size,
        precision=precision,
        seed=cfg.train.seed,
    )


def enabled(cfg: Config) -> bool:
    """Whether a run measures forgetting at all (a suite or at least one user set)."""
    return cfg.forgetting.suite != "none" or bool(cfg.forgetting.sets)


def build_probes(cfg: Config, tokenizer: Any, settings: SuiteSettings, work: Path) -> list[Probe]:
    """The built-in suite's probes, then one probe per user retention set."""
    f = cfg.forgetting
    chat = cfg.model.use_chat_template
    probes = general_suite(tokenizer, settings, use_chat_template=chat) if f.suite != "none" else []
    for s in f.sets:
        prep = _read_whole(
            s.source, work / "sets" / s.name, tokenizer, seed=cfg.train.seed,
            format=s.format, columns=dict(s.columns),
            labels=tuple(s.labels) if s.labels else None, label_words=dict(s.label_words),
            templates=(s.template,) if isinstance(s.template, str) else tuple(s.template or ()),
            system_prompt=s.system_prompt,
        )  # fmt: skip
        examples = prep.splits["train"]  # user_probe takes a seeded sample of max_examples
        metric = s.metric
        if metric == "auto":
            metric = "accuracy" if prep.labels else "nll"
        probes.append(
            user_probe(
                s.name, examples, metric, tokenizer,
                replace(settings, max_examples=s.max_examples or f.max_examples),
                labels=prep.labels,
                label_words=prep.words, use_chat_template=chat,
            )
        )  # fmt: skip
    return probes


def _read_whole(
    source: str | list[str], folder: Path, tokenizer: Any, *, seed: int, **task: Any
) -> Prepared:
    """Every row of ``source`` through the data stage (validation, cleaning, exact dedupe;
    no anonymisation, no near dedupe, no split): all of it lands in ``splits["train"]``."""
    spec = DataSpec.single(
        source, **task, clean=CleanSpec(near_threshold=None), anonymize=None,
        split=SplitSpec(method="random", val=0, test=0, seed=seed),
    )  # fmt: skip
    return prepare(spec, folder, tokenizer=tokenizer)


def lm_view(model: TaskModel) -> TaskModel:
    """The model as a language model: general abilities are read through the LM head even
    when a classifier head was trained (the body it shares with the LM head may move)."""
    return model if model.head == "lm" else TaskModel(model.lm, "lm")


def base_measurement(
    cfg: Config, model: TaskModel, tokenizer: Any, probes: list[Probe], settings: SuiteSettings
) -> tuple[Measurement, bool]:
    """The base model's scores, cached by model, suite version, probes and settings."""
    key = base_key_parts(model_fingerprint(cfg.model.base), probes, settings, tokenizer)
    key.append(str(torch.__version__))
    return cached_base_measurement(
        key, lambda: measure(model, tokenizer, probes, settings, base=None)
    )


def tuned_report(
    cfg: Config,
    model: TaskModel,
    tokenizer: Any,
    probes: list[Probe],
    settings: SuiteSettings,
    base: Measurement,
) -> Retention:
    """Measure ``model`` against the base measurement: per-probe deltas and retention."""
    tuned = measure(lm_view(model), tokenizer, probes, settings, base=base)
    report = compare(base, tuned, probes, n_boot=cfg.forgetting.bootstrap, seed=settings.seed)
    report["seconds"] = {"base": round(base.seconds, 1), "tuned": round(tuned.seconds, 1)}
    report["min_retention"] = cfg.forgetting.min_retention
    return Retention.model_validate(report)


def check_retention(report: Retention, cfg: Config, where: Path) -> None:
    """Raise ForgettingError when the retention score is below ``forgetting.min_retention``."""
    floor = cfg.forgetting.min_retention
    score = report.retention_score
    if floor is not None and score is not None and score < floor:
        worst = sorted(
            ((name, p.retention) for name, p in report.probes.items() if p.retention is not None),
            key=lambda item: item[1],
        )[:3]
        names = ", ".join(f"{name} {value:.3f}" for name, value in worst)
        raise ForgettingError(
            f"retention score {score:.4f} is below forgetting.min_retention {floor} "
            f"(lowest probes: {names}); results are in {where}",
            hint="add a mitigation (forgetting.mitigations: kd, replay, ewc, wise...), lower "
            "train.lr or use method.kind: lora",
        )


# ---- mitigations ------------------------------------------------------------------------


def build_mitigations(cfg: Config) -> list[Mitigation]:
    if cfg.method.head == "classifier" and cfg.forgetting.mitigations.replay is not None:
        raise ForgettingError(
            "forgetting.mitigations.replay trains general text through the LM head, but "
            "method.head is 'classifier'",
            hint="use kd, ewc, si or l2sp with a classifier head, or method.head: lm",
        )
    return _build(cfg.forgetting.mitigations)


def mitigation_context(cfg: Config, tokenizer: Any, precision: str, work: Path) -> Context:
    """General-domain LM examples (disjoint from the probes) and the loop's settings."""
    formatter = PromptFormatter(tokenizer, cfg.model.use_chat_template)

    def encoded(examples: list[Example]) -> list[Encoded]:
        return [encode(tokenizer, formatter, e, max_length=cfg.model.max_length) for e in examples]

    general = encoded(general_training_examples(cfg.forgetting.general_examples, cfg.train.seed))
    m = cfg.forgetting.mitigations
    source = (m.replay.source if m.replay else None) or (m.kd.source if m.kd else None)
    replay = None
    if source is not None:
        prep = _read_whole(source, work / "replay", tokenizer, seed=0)
        if prep.labels:
            raise ForgettingError(
                f"the replay/kd source {source!r} is classification data",
                hint="replay and kd need text to model: chat, instruction or completion rows",
            )
        replay = encoded(prep.splits["train"])
    return Context(
        general=general,
        pad_id=tokenizer.pad_token_id,
        batch_size=cfg.train.batch_size,
        precision=precision,
        seed=cfg.train.seed,
        lr=cfg.train.lr,
        replay=replay,
    )
