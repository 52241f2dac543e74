"""The stages that judge a trained model: few-shot comparison and confidence calibration.

Like ``run.py``, this module reads the config and hands plain values to the components
(``evaluation.compare``, ``evaluation.calibration``, ``evaluation.fewshot``). The
calibration temperature is saved with the model (``model/calibration.json``) and read back
by :func:`read_temperature` wherever tunelab reports probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from tunelab.config import Config
from tunelab.data.split import sample
from tunelab.data.tokenize import Encoded, PromptFormatter, encode
from tunelab.data.types import Example
from tunelab.errors import ConfigError
from tunelab.evaluation.calibration import calibration_report
from tunelab.evaluation.compare import (
    compare_row,
    conclusion,
    measure_latency,
    primary_metric,
    subset,
    with_demonstrations,
)
from tunelab.evaluation.evaluate import EvalSettings, Predictions, predict
from tunelab.evaluation.fewshot import select_shots
from tunelab.models.task_model import TaskModel
from tunelab.results import Calibration, CompareRow, CompareTable

__all__ = [
    "base_rows",
    "calibrate",
    "calibration_wanted",
    "compare_sample",
    "compare_table",
    "tuned_row",
]


def calibration_wanted(cfg: Config, labels: Sequence[str] | None) -> bool:
    """Whether to calibrate: the task must be scored by label likelihood (have labels)."""
    mode = cfg.calibration.enabled
    if mode == "on" and labels is None:
        raise ConfigError(
            "calibration.enabled is 'on' but the task has no labels: only label-scored tasks "
            "have class probabilities to calibrate",
            hint="set calibration.enabled: auto (or off) for generation tasks",
        )
    return mode != "off" and labels is not None


def calibrate(
    cfg: Config,
    model: TaskModel,
    tokenizer: Any,
    val: tuple[Sequence[Example], Sequence[Encoded]],
    test: Predictions,
    test_items: Sequence[Encoded],
    s: EvalSettings,
    *,
    labels: Sequence[str],
    label_ids: Sequence[Sequence[int]],
) -> Calibration:
    """Fit a temperature on a seeded val sample; ECE, Brier and NLL before/after on test."""
    examples, items = val
    cap = cfg.calibration.max_examples
    idx = sample(range(len(items)), cap if cap is not None else len(items), cfg.train.seed)
    fit = predict(
        model, tokenizer, [examples[i] for i in idx], [items[i] for i in idx],
        replace(s, metrics=[]), labels=labels, label_ids=label_ids,
    )  # fmt: skip
    assert fit.scores is not None and test.scores is not None
    report = calibration_report(
        fit.scores, _targets([items[i] for i in idx]),
        test.scores, _targets(test_items), bins=cfg.calibration.bins,
    )  # fmt: skip
    return Calibration.model_validate({**report, "fit_split": "val"})


def _targets(items: Sequence[Encoded]) -> torch.Tensor:
    return torch.tensor([e.class_index for e in items], dtype=torch.long)


def compare_sample(cfg: Config, n_test: int) -> list[int]:
    """Indices of the test examples every compare row is scored on (seeded)."""
    cap = cfg.compare.max_examples
    return sample(range(n_test), n_test if cap is None else cap, cfg.compare.seed)


def base_rows(
    cfg: Config,
    base: TaskModel,
    tokenizer: Any,
    splits: dict[str, list[Example]],
    test_items: Sequence[Encoded],
    s: EvalSettings,
    *,
    labels: Sequence[str] | None,
    label_ids: Sequence[Sequence[int]] | None,
    base_pred: Predictions | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[list[CompareRow], list[str]]:
    """The base model's rows: zero-shot, then k-shot for each ``compare.shots``; and why
    any k was skipped (a train split with fewer usable demonstrations than k).

    Run before training: LoRA and full fine-tuning change the base model in place.
    ``base_pred`` (the base eval's predictions on the whole test split) is reused.
    """
    c = cfg.compare
    test, train = splits["test"], splits["train"]
    idx = compare_sample(cfg, len(test))
    examples, items = [test[i] for i in idx], [test_items[i] for i in idx]
    say(f"compare: base zero-shot on {len(idx)} test examples")
    rows = [_row(cfg, "base 0-shot", base, tokenizer, examples, items, s, labels, label_ids,
                 pred=base_pred and subset(base_pred, idx), kind="base", shots=0)]  # fmt: skip
    formatter = PromptFormatter(tokenizer, cfg.model.use_chat_template)
    pool = [_text(ex) for ex in train]
    skipped: list[str] = []
    for k in c.shots:
        say(f"compare: base {k}-shot ({c.selection} demonstrations) on {len(idx)} test examples")
        try:
            picks = select_shots(
                pool, [_text(ex) for ex in examples], k, method=c.selection, seed=c.seed,
                pool_labels=[str(ex.label) for ex in train] if labels is not None else None,
            )  # fmt: skip
        except ConfigError as exc:  # a train split too small for k: the other rows still count
            skipped.append(f"{k}-shot: {exc}")
            say(f"compare: {k}-shot skipped: {exc}")
            continue
        shot_examples = [
            with_demonstrations(ex, [train[j] for j in pick])
            for ex, pick in zip(examples, picks, strict=True)
        ]
        shot_items = [
            encode(tokenizer, formatter, ex, max_length=c.max_length, labels=labels)
            for ex in shot_examples
        ]
        rows.append(
            _row(cfg, f"base {k}-shot", base, tokenizer, shot_examples, shot_items, s,
                 labels, label_ids, kind="base", shots=k, selection=c.selection)
        )  # fmt: skip
    return rows, skipped


def tuned_row(
    cfg: Config,
    tuned: TaskModel,
    tokenizer: Any,
    test: Sequence[Example],
    test_items: Sequence[Encoded],
    s: EvalSettings,
    *,
    labels: Sequence[str] | None,
    label_ids: Sequence[Sequence[int]] | None,
    tuned_pred: Predictions | None = None,
) -> CompareRow:
    """The fine-tuned model's row, on the same test sample as :func:`base_rows`."""
    idx = compare_sample(cfg, len(test))
    return _row(cfg, "fine-tuned", tuned, tokenizer, [test[i] for i in idx],
                [test_items[i] for i in idx], s, labels, label_ids,
                pred=tuned_pred and subset(tuned_pred, idx), kind="tuned", shots=0)  # fmt: skip


def compare_table(
    rows: list[CompareRow], classification: bool, skipped: Sequence[str] = ()
) -> CompareTable:
    """The ``compare`` part of the results: the rows, the headline metric, the one-sentence
    verdict and the few-shot rows that could not be built."""
    plain = [r.to_json() for r in rows]  # what evaluation.compare reads
    primary = primary_metric(plain, classification)
    return CompareTable(primary=primary, n=rows[0].n if rows else 0, rows=rows,
                        conclusion=conclusion(plain, primary), skipped=list(skipped))  # fmt: skip


def _row(
    cfg: Config,
    name: str,
    model: TaskModel,
    tokenizer: Any,
    examples: Sequence[Example],
    items: Sequence[Encoded],
    s: EvalSettings,
    labels: Sequence[str] | None,
    label_ids: Sequence[Sequence[int]] | None,
    *,
    kind: str,
    shots: int,
    pred: Predictions | None = None,
    selection: str | None = None,
) -> CompareRow:
    scoring: dict[str, Any] = {"labels": labels, "label_ids": label_ids}
    if pred is None:
        pred = predict(model, tokenizer, examples, items, s, **scoring)
    ms = measure_latency(
        model, tokenizer, examples, items, s, requests=cfg.compare.latency_requests, **scoring
    )
    row = compare_row(name, pred, examples, s, model=kind, shots=shots, selection=selection,
                      latency_ms=ms, labels=labels)  # fmt: skip
    return CompareRow.model_validate(row)


def _text(example: Example) -> str:
    return example.messages[-1]["content"]
