"""The report's sections: each a pure function from parts of results.json to HTML markup.

Every section renders whatever of its data is present and says "not measured in this run"
for what is not; none of them raises on a missing key, so a results.json from an older or
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


def header_section(results: Mapping[str, Any], written: str | None) -> Safe:
    """Who and what: run, model, method, version, when, wall time, peak memory, environment."""
    model, method = as_dict(results.get("model")), as_dict(results.get("method"))
    env = as_dict(results.get("environment"))
    kind = " / ".join(str(method[k]) for k in ("kind", "head") if method.get(k))
    params = params_text(results.get("trainable_params"), results.get("total_params"))
    machine = ", ".join(
        f"{k} {env[k]}" for k in ("device", "precision", "torch", "python", "threads") if k in env
    )
    return section(
        "run",
        _TITLE["run"],
        facts(
            {
                "run": results.get("run"),
                "base model": model.get("base"),
                "model source": model.get("source"),
                "method (kind / head)": kind or None,
                "trainable parameters": params,
                "tunelab version": results.get("tunelab_version"),
                "results written": written,
                "wall time": opt(results.get("wall_seconds"), fmt_seconds),
                "peak memory (RSS)": unit(results.get("peak_rss_mb"), "MiB"),
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


def data_section(card: Mapping[str, Any] | None) -> Safe:
    """The data card: where rows went (kept, dropped and why), split sizes, labels, PII."""
    if not card:
        return section("data", _TITLE["data"], absent("no data card in results.json"))
    split = card.get("split_method")
    lines = [card.get("format_note"), f"Split: {split}" if split else None]
    note = Safe("".join(f"<p>{esc(x)}</p>" for x in lines if x))
    overview = facts(
        {
            "rows in": opt(card.get("rows_in")),
            "rows kept": opt(card.get("rows_kept")),
            "splits": ", ".join(f"{k} {fmt(v)}" for k, v in as_dict(card.get("splits")).items())
            or None,
            "data hash": card.get("hash"),
        }
    )
    tasks = as_dict(card.get("tasks"))
    per_task = (
        table(
            ["task", "format", "in", "kept", "dropped", "train", "val", "test"],
            [
                [
                    name,
                    t.get("format", ""),
                    fmt(t.get("rows_in")),
                    fmt(t.get("kept")),
                    fmt(sum(as_dict(t.get("dropped")).values())),
                    *(fmt(as_dict(t.get("splits")).get(s)) for s in ("train", "val", "test")),
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
        bullets(card.get("warnings")),
    )


def training_section(
    training: Mapping[str, Any] | None,
    records: Sequence[Mapping[str, Any]],
    val_samples: Sequence[Mapping[str, Any]],
) -> Safe:
    """The loss curves with the kept (best) step, the numbers of the run, and, when the loop
    logged them, the latest validation generations."""
    training = training or {}
    if not training and not records:
        return section("training", _TITLE["training"], absent("no training in results.json"))
    best = training.get("best_step")
    plotted = any(is_number(r.get("loss")) or is_number(r.get("val_loss")) for r in records)
    curves = (
        image(
            plots.loss_curves(records, best if isinstance(best, int) else None),
            "training and validation loss by step",
        )
        if plotted
        else absent("no loss curve: metrics.jsonl is missing or empty")
    )
    numbers = facts(
        {
            "steps": opt(training.get("steps")),
            "stopped": training.get("stopped"),
            "best step (kept checkpoint)": opt(best),
            "best val loss": opt(training.get("best_val_loss"), fmt_metric),
            "tokens": opt(training.get("tokens")),
            "time": opt(training.get("seconds"), fmt_seconds),
            "tokens / s": opt(training.get("tokens_per_second")),
        }
    )
    return section("training", _TITLE["training"], numbers, curves, val_samples_table(val_samples))


def metrics_section(base: Mapping[str, Any] | None, tuned: Mapping[str, Any] | None) -> Safe:
    """Each scalar metric of the base and the fine-tuned model on the test split, with 95%
    intervals when measured and the difference; then per-class scores and confusion matrices."""
    base, tuned = as_dict(base), as_dict(tuned)
    if not base and not tuned:
        return section("metrics", _TITLE["metrics"], absent("no evaluation in results.json"))
    bm, tm = as_dict(base.get("metrics")), as_dict(tuned.get("metrics"))
    names = [k for k in {**tm, **bm} if is_number(tm.get(k)) or is_number(bm.get(k))]
    rows = []
    for name in names:
        b, t = bm.get(name), tm.get(name)
        delta = t - b if is_number(b) and is_number(t) else None
        rows.append(
            [
                name,
                fmt_metric(b),
                ci_text(as_dict(base.get("ci95")).get(name)),
                fmt_metric(t),
                ci_text(as_dict(tuned.get("ci95")).get(name)),
                fmt_metric(delta, signed=True),
            ]
        )
    sizes = facts(
        {
            "test examples": fmt(tuned.get("n", base.get("n"))),
            "evaluation time (base / fine-tuned)": " / ".join(
                fmt_seconds(x.get("seconds")) for x in (base, tuned)
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
        per_class_table(tm),
        confusion_table(bm, "base"),
        confusion_table(tm, "fine-tuned"),
    )


def compare_section(compare: Mapping[str, Any] | None) -> Safe:
    """Base zero-shot vs base k-shot vs fine-tuned on the same test set, with prompt cost."""
    rows = as_dict(compare).get("rows") or []
    if not compare or not rows:
        return section("compare", _TITLE["compare"], absent("run `tunelab compare`"))
    primary = str(compare.get("primary") or "accuracy")
    seen = {k: 0 for r in rows for k in as_dict(r.get("metrics"))}
    others = [
        k
        for k in seen
        if k != primary and any(is_number(as_dict(r.get("metrics")).get(k)) for r in rows)
    ]
    body = [
        [
            r.get("name", ""),
            fmt(r.get("shots")),
            r.get("selection") or "—",
            fmt(r.get("n")),
            fmt_metric(as_dict(r.get("metrics")).get(primary)),
            ci_text(as_dict(r.get("ci95")).get(primary)),
            *(fmt_metric(as_dict(r.get("metrics")).get(k)) for k in others),
            fmt(r.get("prompt_tokens")),
            fmt(r.get("latency_ms")),
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
    conclusion = compare.get("conclusion")
    return section(
        "compare",
        _TITLE["compare"],
        Safe(f'<p class="conclusion">{esc(conclusion)}</p>') if conclusion else "",
        table(headers, body, numeric=[1, 3, *range(4, len(headers))]),
        bullets([f"skipped {note}" for note in compare.get("skipped") or []]),
        image(plots.compare_chart(compare), f"{primary} per setting with 95% intervals"),
    )


def forgetting_section(forgetting: Mapping[str, Any] | None) -> Safe:
    """Retention of general abilities: per probe base vs fine-tuned, and the overall score."""
    if not forgetting:
        return section("forgetting", _TITLE["forgetting"], absent())
    score = forgetting.get("retention_score")
    summary = facts(
        {
            "retention score (95% CI)": join(
                opt(score, fmt_metric), ci_text(forgetting.get("retention_ci95")), sep=" "
            ),
            "probes in the score": opt(forgetting.get("n_probes_in_score")),
            "minimum retention": opt(forgetting.get("min_retention")),
        }
    )
    probes = as_dict(forgetting.get("probes"))
    rows = [
        [
            name,
            p.get("description", ""),
            p.get("metric", ""),
            {True: "↑", False: "↓"}.get(p.get("higher_is_better"), ""),
            fmt_metric(p.get("base")),
            fmt_metric(p.get("tuned")),
            fmt_metric(p.get("delta"), signed=True),
            ci_text(p.get("ci95")),
            fmt(p.get("significant")),
            join(fmt_metric(p.get("retention")), ci_text(p.get("retention_ci95")), sep=" "),
        ]
        for name, p in probes.items()
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
    notes = bullets(forgetting.get("notes"))
    return section(
        "forgetting",
        _TITLE["forgetting"],
        summary,
        table(headers, rows, numeric=range(4, 10), wide=[1]) if rows else "",
        notes,
    )


def calibration_section(calibration: Mapping[str, Any] | None) -> Safe:
    """Temperature scaling fitted on val: ECE, Brier and NLL before and after, and the
    reliability diagram."""
    if not calibration:
        return section("calibration", _TITLE["calibration"], absent("run `tunelab calibrate`"))
    before, after = as_dict(calibration.get("before")), as_dict(calibration.get("after"))
    summary = facts(
        {
            "temperature": opt(calibration.get("temperature")),
            "bins": opt(calibration.get("bins")),
            "fitted on (val examples)": opt(calibration.get("n_fit")),
            "measured on (test examples)": opt(calibration.get("n_test")),
        }
    )
    measures = [
        ("ece", "ECE (expected calibration error)"),
        ("brier", "Brier score"),
        ("nll", "NLL"),
        ("accuracy", "accuracy"),
        ("mean_confidence", "mean confidence"),
    ]
    rows = [
        [
            label,
            fmt_metric(before.get(k)),
            fmt_metric(after.get(k)),
            fmt_metric(after[k] - before[k], signed=True)
            if is_number(before.get(k)) and is_number(after.get(k))
            else "—",
        ]
        for k, label in measures
        if k in before or k in after
    ]
    diagram = (
        image(plots.reliability_diagram(calibration), "reliability diagram before and after")
        if calibration.get("reliability")
        else absent("no reliability bins")
    )
    return section(
        "calibration",
        _TITLE["calibration"],
        summary,
        table(["measure", "before", "after", "Δ"], rows, numeric=[1, 2, 3]),
        diagram,
    )


def predictions_section(tuned: Mapping[str, Any] | None) -> Safe:
    """A few correct and a few wrong predictions of the fine-tuned model."""
    samples = [s for s in as_dict(tuned).get("samples") or [] if isinstance(s, Mapping)]
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
