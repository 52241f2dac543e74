"""The report's sections: each a pure function from typed parts of the results to HTML.

Every section renders whatever of its data is present and says "not measured in this run"
for what is not (a part or field that is None), so a results.json from an older or
partial run (``eval.base: false``, no forgetting suite, no calibration) still renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tunelab.report import plots
from tunelab.report._details import (
    SAMPLES_SHOWN,
    confusion_table,
    dropped_table,
    is_correct,
    label_balance_table,
    params_text,
    per_class_table,
    pii_note,
    samples_table,
    val_samples_table,
)
from tunelab.report._format import (
    Safe,
    absent,
    as_dict,
    bullets,
    ci_text,
    esc,
    facts,
    fmt,
    fmt_metric,
    fmt_seconds,
    image,
    is_number,
    join,
    opt,
    section,
    table,
    unit,
)
from tunelab.results import (
    Calibration,
    CompareTable,
    DataCard,
    Evaluation,
    Results,
    Retention,
    Training,
)

__all__ = [
    "SECTIONS",
    "calibration_section",
    "compare_section",
    "config_section",
    "data_section",
    "forgetting_section",
    "header_section",
    "metrics_section",
    "predictions_section",
    "training_section",
]

# (anchor, heading) of every section, in page order
SECTIONS = [
    ("run", "Run"),
    ("config", "Config"),
    ("data", "Data"),
    ("training", "Training"),
    ("metrics", "Metrics: base vs fine-tuned"),
    ("compare", "Compare: zero-shot, few-shot, fine-tuned"),
    ("forgetting", "Forgetting"),
    ("calibration", "Calibration"),
    ("predictions", "Predictions"),
]
_TITLE = dict(SECTIONS)


def header_section(results: Results, written: str | None) -> Safe:
    """Who and what: run, model, method, version, when, wall time, peak memory, environment."""
    model, method, env = results.model, results.method, results.environment
    kind = " / ".join(x for x in (method.kind, method.head) if x) if method else ""
    machine = ""
    if env is not None:
        parts = {"device": env.device, "precision": env.precision, "torch": env.torch,
                 "python": env.python, "threads": env.threads}  # fmt: skip
        machine = ", ".join(f"{k} {v}" for k, v in parts.items() if v is not None)
    return section(
        "run",
        _TITLE["run"],
        facts(
            {
                "run": results.run,
                "base model": model.base if model else None,
                "model source": model.source if model else None,
                "method (kind / head)": kind or None,
                "trainable parameters": params_text(results.trainable_params, results.total_params),
                "tunelab version": results.tunelab_version,
                "results written": written,
                "wall time": opt(results.wall_seconds, fmt_seconds),
                "peak memory (RSS)": unit(results.peak_rss_mb, "MiB"),
                "environment": machine or None,
            }
        ),
    )


def config_section(config_text: str | None) -> Safe:
    """Key facts of the resolved config, and the whole YAML in a collapsible block."""
    if config_text is None:
        return section("config", _TITLE["config"], absent("no config.resolved.yaml"))
    try:
        cfg = as_dict(yaml.safe_load(config_text))
    except yaml.YAMLError:
        cfg = {}
    model, method, train = (as_dict(cfg.get(k)) for k in ("model", "method", "train"))
    steps = train.get("max_steps")
    batch = train.get("batch_size")
    key = facts(
        {
            "base model": model.get("base"),
            "method": " / ".join(str(method[k]) for k in ("kind", "head") if method.get(k)) or None,
            "learning rate": opt(train.get("lr")),
            "schedule": join(train.get("schedule"), unit(train.get("warmup"), "warm-up")),
            "steps": fmt(steps) if steps else unit(train.get("epochs"), "epochs"),
            "batch": join(
                unit(batch, "examples"),
                unit(train.get("max_batch_tokens"), "tokens max"),
                unit(train.get("grad_accum"), "× accumulation"),
            ),
            "seed": train.get("seed"),
        }
    )
    full = Safe(
        f"<details><summary>config.resolved.yaml</summary><pre>{esc(config_text)}</pre></details>"
    )
    return section("config", _TITLE["config"], key, full)


def data_section(card: DataCard | None) -> Safe:
    """The data card: where rows went (kept, dropped and why), split sizes, labels, PII."""
    if card is None:
        return section("data", _TITLE["data"], absent("no data card in results.json"))
    split = card.split_method
    lines = [card.format_note, f"Split: {split}" if split else None]
    note = Safe("".join(f"<p>{esc(x)}</p>" for x in lines if x))
    overview = facts(
        {
            "rows in": opt(card.rows_in),
            "rows kept": opt(card.rows_kept),
            "splits": ", ".join(f"{k} {fmt(v)}" for k, v in card.splits.items()) or None,
            "data hash": card.hash,
        }
    )
    tasks = card.tasks
    per_task = (
        table(
            ["task", "format", "in", "kept", "dropped", "train", "val", "test"],
            [
                [
                    name,
                    t.format or "",
                    fmt(t.rows_in),
                    fmt(t.kept),
                    fmt(sum(t.dropped.values())),
                    *(fmt(t.splits.get(s)) for s in ("train", "val", "test")),
                ]
                for name, t in tasks.items()
            ],
            numeric=range(2, 8),
            caption="rows per task",
        )
        if tasks
        else ""
    )
    return section(
        "data",
        _TITLE["data"],
        note,
        overview,
        per_task,
        dropped_table(tasks),
        label_balance_table(card),
        pii_note(card),
        bullets(card.warnings),
    )


def training_section(
    training: Training | None,
    records: Sequence[Mapping[str, Any]],
    val_samples: Sequence[Mapping[str, Any]],
) -> Safe:
    """The loss curves with the kept (best) step, the numbers of the run, and, when the loop
    logged them, the latest validation generations."""
    if training is None and not records:
        return section("training", _TITLE["training"], absent("no training in results.json"))
    best = training.best_step if training else None
    plotted = any(is_number(r.get("loss")) or is_number(r.get("val_loss")) for r in records)
    curves = (
        image(plots.loss_curves(records, best), "training and validation loss by step")
        if plotted
        else absent("no loss curve: metrics.jsonl is missing or empty")
    )
    numbers = facts({})
    if training is not None:
        numbers = facts(
            {
                "steps": opt(training.steps),
                "stopped": training.stopped,
                "best step (kept checkpoint)": opt(best),
                "best val loss": opt(training.best_val_loss, fmt_metric),
                "tokens": opt(training.tokens),
                "time": opt(training.seconds, fmt_seconds),
                "tokens / s": opt(training.tokens_per_second),
            }
        )
    return section("training", _TITLE["training"], numbers, curves, val_samples_table(val_samples))


def metrics_section(base: Evaluation | None, tuned: Evaluation | None) -> Safe:
    """Each scalar metric of the base and the fine-tuned model on the test split, with 95%
    intervals when measured and the difference; then per-class scores and confusion matrices."""
    if base is None and tuned is None:
        return section("metrics", _TITLE["metrics"], absent("no evaluation in results.json"))
    bm = base.metrics if base else {}
    tm = tuned.metrics if tuned else {}
    bci = base.ci95 if base else {}
    tci = tuned.ci95 if tuned else {}
    names = [k for k in {**tm, **bm} if is_number(tm.get(k)) or is_number(bm.get(k))]
    rows = []
    for name in names:
        b, t = bm.get(name), tm.get(name)
        delta = t - b if is_number(b) and is_number(t) else None
        rows.append(
            [
                name,
                fmt_metric(b),
                ci_text(bci.get(name)),
                fmt_metric(t),
                ci_text(tci.get(name)),
                fmt_metric(delta, signed=True),
            ]
        )
    sizes = facts(
        {
            "test examples": fmt(tuned.n if tuned else base.n if base else None),
            "evaluation time (base / fine-tuned)": " / ".join(
                fmt_seconds(x.seconds if x else None) for x in (base, tuned)
            ),
        }
    )
    main = table(
        ["metric", "base", "base 95% CI", "fine-tuned", "fine-tuned 95% CI", "Δ"],
        rows,
        numeric=range(1, 6),
    )
    note = "" if base else absent("no base evaluation (eval.base: false)")
    return section(
        "metrics",
        _TITLE["metrics"],
        sizes,
        main,
        note,
        per_class_table(tuned.per_class if tuned else None),
        confusion_table(base.confusion_matrix if base else None, "base"),
        confusion_table(tuned.confusion_matrix if tuned else None, "fine-tuned"),
    )


def compare_section(compare: CompareTable | None) -> Safe:
    """Base zero-shot vs base k-shot vs fine-tuned on the same test set, with prompt cost."""
    if compare is None or not compare.rows:
        return section("compare", _TITLE["compare"], absent("run `tunelab compare`"))
    rows = compare.rows
    primary = compare.primary or "accuracy"
    seen = {k: 0 for r in rows for k in r.metrics}
    others = [k for k in seen if k != primary and any(is_number(r.metrics.get(k)) for r in rows)]
    body = [
        [
            r.name,
            fmt(r.shots),
            r.selection or "—",
            fmt(r.n),
            fmt_metric(r.metrics.get(primary)),
            ci_text(r.ci95.get(primary)),
            *(fmt_metric(r.metrics.get(k)) for k in others),
            fmt(r.prompt_tokens),
            fmt(r.latency_ms),
        ]
        for r in rows
    ]
    headers = [
        "setting",
        "shots",
        "selection",
        "n",
        primary,
        f"{primary} 95% CI",
        *others,
        "mean prompt tokens",
        "mean latency (ms)",
    ]
    conclusion = compare.conclusion
    return section(
        "compare",
        _TITLE["compare"],
        Safe(f'<p class="conclusion">{esc(conclusion)}</p>') if conclusion else "",
        table(headers, body, numeric=[1, 3, *range(4, len(headers))]),
        bullets([f"skipped {note}" for note in compare.skipped]),
        image(plots.compare_chart(compare), f"{primary} per setting with 95% intervals"),
    )


def forgetting_section(forgetting: Retention | None) -> Safe:
    """Retention of general abilities: per probe base vs fine-tuned, and the overall score."""
    if forgetting is None:
        return section("forgetting", _TITLE["forgetting"], absent())
    summary = facts(
        {
            "retention score (95% CI)": join(
                opt(forgetting.retention_score, fmt_metric),
                ci_text(forgetting.retention_ci95),
                sep=" ",
            ),
            "probes in the score": opt(forgetting.n_probes_in_score),
            "minimum retention": opt(forgetting.min_retention),
        }
    )
    rows = [
        [
            name,
            p.description,
            p.metric,
            "↑" if p.higher_is_better else "↓",
            fmt_metric(p.base),
            fmt_metric(p.tuned),
            fmt_metric(p.delta, signed=True),
            ci_text(p.ci95),
            fmt(p.significant),
            join(fmt_metric(p.retention), ci_text(p.retention_ci95), sep=" "),
        ]
        for name, p in forgetting.probes.items()
    ]
    headers = [
        "probe",
        "measures",
        "metric",
        "better",
        "base",
        "fine-tuned",
        "Δ",
        "Δ 95% CI",
        "significant",
        "retention [95% CI]",
    ]
    return section(
        "forgetting",
        _TITLE["forgetting"],
        summary,
        table(headers, rows, numeric=range(4, 10), wide=[1]) if rows else "",
        bullets(forgetting.notes),
    )


def calibration_section(calibration: Calibration | None) -> Safe:
    """Temperature scaling fitted on val: ECE, Brier and NLL before and after, and the
    reliability diagram."""
    if calibration is None:
        return section("calibration", _TITLE["calibration"], absent("run `tunelab calibrate`"))
    summary = facts(
        {
            "temperature": opt(calibration.temperature),
            "bins": opt(calibration.bins),
            "fitted on (val examples)": opt(calibration.n_fit),
            "measured on (test examples)": opt(calibration.n_test),
        }
    )
    b, a = calibration.before, calibration.after
    measures = [
        ("ECE (expected calibration error)", b.ece, a.ece),
        ("Brier score", b.brier, a.brier),
        ("NLL", b.nll, a.nll),
        ("accuracy", b.accuracy, a.accuracy),
        ("mean confidence", b.mean_confidence, a.mean_confidence),
    ]
    rows = [
        [
            label,
            fmt_metric(x),
            fmt_metric(y),
            fmt_metric(y - x, signed=True) if is_number(x) and is_number(y) else "—",
        ]
        for label, x, y in measures
    ]
    diagram = (
        image(plots.reliability_diagram(calibration), "reliability diagram before and after")
        if calibration.reliability
        else absent("no reliability bins")
    )
    return section(
        "calibration",
        _TITLE["calibration"],
        summary,
        table(["measure", "before", "after", "Δ"], rows, numeric=[1, 2, 3]),
        diagram,
    )


def predictions_section(tuned: Evaluation | None) -> Safe:
    """A few correct and a few wrong predictions of the fine-tuned model."""
    samples = tuned.samples if tuned else []
    if not samples:
        return section("predictions", _TITLE["predictions"], absent("no samples"))
    right = [s for s in samples if is_correct(s)]
    wrong = [s for s in samples if not is_correct(s)]
    note = Safe(
        f"<p>{len(samples)} samples kept in results.json: {len(right)} correct, "
        f"{len(wrong)} wrong; showing up to {SAMPLES_SHOWN} of each.</p>"
    )
    return section(
        "predictions",
        _TITLE["predictions"],
        note,
        samples_table(right[:SAMPLES_SHOWN], "correct"),
        samples_table(wrong[:SAMPLES_SHOWN], "wrong"),
    )
