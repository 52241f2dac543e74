"""The model card of an export: ``README.md`` with Hub front matter and the run's numbers.

:func:`model_card` builds it from the model's ``tunelab_model.json``, the ``exported``
facts (:func:`tunelab.export.folder.export_facts`), the run's ``results.json`` and the
model's ``calibration.json``: how to load the folder with plain transformers, test metrics
with their bootstrap intervals, fine-tuning vs few-shot prompting, calibration, forgetting,
the data card, training facts and the export itself. A section whose numbers the run did
not measure says so instead of being left out.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tunelab.models.generation import reply
from tunelab.models.registry import ALIASES
from tunelab.models.saved import CALIBRATION_FILE
from tunelab.report._format import ci_text, fmt, fmt_metric, fmt_seconds
from tunelab.results import Calibration, CalibrationSummary, Interval, Results

__all__ = ["CARD_FILE", "CLASSIFIER_FILE", "model_card"]

CARD_FILE = "README.md"
CLASSIFIER_FILE = "classifier.safetensors"  # a classifier head, as models.saved writes it

# Hub ids of the built-in aliases, for the card's ``base_model`` (the alias weights are a
# GGUF build of this model, dequantised to fp32; the card says so).
_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_REPLY = inspect.signature(reply).parameters  # tunelab's own decoding defaults


def model_card(
    info: Mapping[str, Any],
    exported: Mapping[str, Any],
    results: Results | None,
    calibration: Mapping[str, Any] | None = None,
) -> str:
    """``README.md`` of the export: Hub front matter, then the run's measurements.

    ``results`` is the run's ``results.json`` (None for a bare model folder: every
    measured section then says it is absent); ``calibration`` the model's calibration.json.
    """
    r = results if results is not None else Results()
    why = (
        "this run did not measure it"
        if results is not None
        else "the model folder had no results.json beside it; export the run folder"
    )
    sections = [
        _front_matter(info, exported),
        f"# {r.run or 'tunelab model'}\n\n{_summary(info, exported, r)}",
        _usage(info, exported, r),
        _test_metrics(r, why, quantized=bool(exported.get("quantization"))),
        _compare(r, why),
        _calibration(r.calibration, calibration, why),
        _forgetting(r, why),
        _data(r, why),
        _training(info, r, why),
        _export_section(exported),
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"


def _front_matter(info: Mapping[str, Any], exported: Mapping[str, Any]) -> str:
    base = str(info["base"])
    meta: dict[str, Any] = {}
    hub_id = _HUB_IDS.get(base) or (base if _looks_like_hub_id(base) else None)
    if hub_id:
        meta["base_model"] = hub_id
    if base in ALIASES:
        meta["license"] = ALIASES[base].license.lower()
    meta["library_name"] = "transformers"
    tags = ["tunelab", "fine-tuned", str(info["kind"])]
    if exported.get("merged_lora"):
        tags.append("merged-lora")
    if info.get("format"):
        tags.append(str(info["format"]))
    if exported.get("quantization"):
        tags += ["int8", "torchao"]
    meta["tags"] = tags
    meta["pipeline_tag"] = "text-generation"
    return f"---\n{yaml.safe_dump(meta, sort_keys=False).strip()}\n---"


def _looks_like_hub_id(base: str) -> bool:
    return base.count("/") == 1 and not base.startswith((".", "/", "~")) and not Path(base).exists()


def _summary(info: Mapping[str, Any], exported: Mapping[str, Any], r: Results) -> str:
    kind = {"lora": "LoRA (adapters merged into the weights)", "full": "full fine-tuning",
            "frozen": "frozen base (only the classifier head was trained)"}  # fmt: skip
    source = r.model.source if r.model else None
    rows = {
        "base model": f"`{info['base']}`" + (f" ({source})" if source else ""),
        "method": kind.get(str(info["kind"]), str(info["kind"])),
        "head": str(info["head"]),
        "task format": info.get("format"),
        "labels": _labels(info),
        "template": info.get("template"),
        "weights": exported.get("weights"),
        "exported": exported.get("at"),
    }
    return _bullets(rows)


def _labels(info: Mapping[str, Any]) -> str | None:
    labels, words = info.get("labels"), info.get("label_words") or {}
    if not labels:
        return None
    return ", ".join(
        f"`{lab}` (answers `{words[lab]}`)" if lab in words else f"`{lab}`" for lab in labels
    )


def _usage(info: Mapping[str, Any], exported: Mapping[str, Any], r: Results) -> str:
    samples = r.tuned.samples if r.tuned else []
    prompt = (samples[0].prompt if samples else "") or "Hello! What can you do?"
    torchao = " The int8 weights need `pip install torchao` as well."
    lines = [
        "## How to load",
        "",
        "Plain `transformers` loads this folder; tunelab and peft are not needed."
        + (torchao if exported.get("quantization") else ""),
        "`generation_config.json` holds tunelab's decoding defaults: greedy, repetition "
        f"penalty {_REPLY['repetition_penalty'].default}.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
        f"messages = [{{'role': 'user', 'content': {prompt!r}}}]",
        "text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
        "tokenize=False)",
        'inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)',
        "out = model.generate(**inputs)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
    ]
    words = info.get("label_words") or {}
    if info.get("labels"):
        labels = list(info["labels"])
        answer = [words.get(lab, lab) for lab in labels]
        lines += [
            "",
            f"tunelab scores this task by label likelihood: the label whose answer word "
            f"({', '.join(answer)}) has the most probable first token after the prompt "
            "wins, and the calibrated probabilities are the softmax over those logits "
            "divided by the temperature in `calibration.json`.",
        ]
    if info.get("head") == "classifier":
        lines += [
            "",
            f"This model was trained with a classifier head (`{CLASSIFIER_FILE}`: a linear "
            "layer from the last prompt token's final hidden state to the labels, in "
            f"the order {info.get('labels')}). Plain transformers ignores that file and "
            "loads the language-model head; tunelab (`tunelab eval --model THIS_FOLDER`) "
            "uses the classifier.",
        ]
    return "\n".join(lines)


def _absent(what: str, why: str) -> str:
    return f"Not in this export: {what} ({why})."


def _with_ci(value: float | None, ci: Interval | None, *, signed: bool = False) -> str:
    """``0.860 [0.828, 0.892]``; the value alone when there is no interval."""
    return f"{fmt_metric(value, signed=signed)} {ci_text(ci)}".strip()


def _test_metrics(r: Results, why: str, *, quantized: bool) -> str:
    head = "## Test metrics"
    tuned, base = r.tuned, r.base
    if tuned is None:
        return f"{head}\n\n{_absent('test metrics', why)}"
    rows = []
    for key, value in tuned.metrics.items():
        before = base.metrics.get(key) if base else None
        delta = fmt_metric(value - before, signed=True) if before is not None else "—"
        rows.append([key, _with_ci(before, base.ci95.get(key)) if base else "—",
                     _with_ci(value, tuned.ci95.get(key)), delta])  # fmt: skip
    note = (f"On the test split ({fmt(tuned.n)} examples); 95% bootstrap intervals in "
            "brackets. Base: the base model zero-shot.")  # fmt: skip
    if quantized:
        note += " Measured by the run on the fp32 model, before int8 quantisation."
    table = _md_table(["metric", "base (zero-shot)", "fine-tuned", "Δ"], rows)
    return f"{head}\n\n{note}\n\n{table}"


def _compare(r: Results, why: str) -> str:
    head = "## Fine-tuning vs few-shot prompting"
    c = r.compare
    if c is None or not c.rows:
        return f"{head}\n\n{_absent('the compare table', why)}"
    primary = c.primary
    rows = [
        [row.name, row.shots, _with_ci(row.metrics.get(primary), row.ci95.get(primary)),
         fmt(row.prompt_tokens), fmt(row.ms_per_example), fmt(row.latency_ms)]
        for row in c.rows
    ]  # fmt: skip
    table = _md_table(["setting", "shots", f"{primary} [95% CI]", "prompt tokens",
                       "ms/example (batched)", "latency ms (batch 1)"], rows)  # fmt: skip
    text = f"{head}\n\nOn {fmt(c.n)} test examples.\n\n{table}"
    if c.conclusion:
        text += f"\n\n**Verdict:** {c.conclusion}."
    for skipped in c.skipped:
        text += f"\n\n- skipped: {skipped}"
    return text


def _calibration(report: Calibration | None, saved: Mapping[str, Any] | None, why: str) -> str:
    """From the run's results; else from the model's own ``calibration.json`` (a bare model
    folder), which keeps the temperature, its fit and the ``after`` scores only."""
    head = "## Calibration"
    temperature: float | None
    n_fit: int | None
    if report is not None:
        temperature, n_fit, split = report.temperature, report.n_fit, report.fit_split
        sides = [("before", report.before), ("after", report.after)]
    elif saved:
        temperature, n_fit = saved.get("temperature"), saved.get("n_fit")
        split = saved.get("fit_split", "val")
        after = saved.get("after")
        sides = [("after", CalibrationSummary.model_validate(after))] if after else []
    else:
        return f"{head}\n\n{_absent('a calibration temperature', why)}"
    rows = [[side, *map(fmt_metric, (v.ece, v.brier, v.nll, v.accuracy, v.mean_confidence))]
            for side, v in sides]  # fmt: skip
    text = (f"{head}\n\nTemperature **{fmt(temperature)}**, fitted on "
            f"{fmt(n_fit)} {split} examples (min NLL); scores on the test split.")  # fmt: skip
    if rows:
        text += "\n\n" + _md_table(["", "ECE", "Brier", "NLL", "accuracy", "mean confidence"],
                                   rows)  # fmt: skip
    text += (f"\n\nThe temperature is in `{CALIBRATION_FILE}`; plain transformers does not "
             "apply it: divide the label logits by it before the softmax.")  # fmt: skip
    return text


def _forgetting(r: Results, why: str) -> str:
    head = "## Forgetting (retention of general abilities)"
    f = r.forgetting
    if f is None or not f.probes:
        return f"{head}\n\n{_absent('the retention suite', why)}"
    rows = [
        [name, p.metric, fmt_metric(p.base), fmt_metric(p.tuned),
         _with_ci(p.delta, p.ci95, signed=True), _with_ci(p.retention, p.retention_ci95),
         "higher" if p.higher_is_better else "lower"]
        for name, p in f.probes.items()
    ]  # fmt: skip
    table = _md_table(["probe", "metric", "base", "fine-tuned", "Δ [95% CI]",
                       "retention [95% CI]", "better"], rows)  # fmt: skip
    score = _with_ci(f.retention_score, f.retention_ci95)
    text = (f"{head}\n\n**Retention score: {score}** (1.0 = kept everything; over "
            f"{fmt(f.n_probes_in_score)} probes).\n\n{table}")  # fmt: skip
    for note in f.notes:
        text += f"\n\n- {note}"
    return text


def _data(r: Results, why: str) -> str:
    head = "## Data"
    d = r.data
    if d is None:
        return f"{head}\n\n{_absent('the data card', why)}"
    dropped: dict[str, int] = {}
    for task in d.tasks.values():
        for part in (task.recipe_dropped, task.dropped, task.leakage_removed):
            for reason, n in part.items():
                dropped[reason] = dropped.get(reason, 0) + int(n)
    pii = d.pii
    found = ", ".join(f"{k} {v}" for k, v in pii.found.items()) if pii else ""
    items = {
        "source": d.format_note,
        "rows": f"{fmt(d.rows_in)} read, {fmt(d.rows_kept)} kept",
        "splits": ", ".join(f"{k} {fmt(v)}" for k, v in d.splits.items()),
        "split method": d.split_method,
        "dropped": "; ".join(f"{k}: {fmt(v)}" for k, v in dropped.items()) or "nothing",
        "PII": f"policy {pii.policy}, found {found or 'none'}" if pii else None,
        "label balance": "; ".join(
            f"{split}: " + ", ".join(f"{k} {fmt(v)}" for k, v in counts.items())
            for split, counts in (d.label_balance or {}).items()
        ),
        "data hash": f"`{d.hash}`" if d.hash else None,
    }
    text = f"{head}\n\n{_bullets(items)}"
    for warning in d.warnings:
        text += f"\n- warning: {warning}"
    return text


def _training(info: Mapping[str, Any], r: Results, why: str) -> str:
    head = "## Training"
    t = r.training
    if t is None:
        return f"{head}\n\n{_absent('training facts', why)}"
    env = r.environment.to_json() if r.environment else {}
    mitigations = r.mitigations.used if r.mitigations else None
    trainable, total = r.trainable_params, r.total_params
    items = {
        "method": f"{info['kind']}, head {info['head']}",
        "trainable parameters": f"{fmt(trainable)} of {fmt(total)}" if trainable else None,
        "steps": f"{fmt(t.steps)} ({t.stopped}); kept step "
        f"{fmt(t.best_step)}, val loss {fmt(t.best_val_loss)}",
        "tokens": f"{fmt(t.tokens)} in {fmt_seconds(t.seconds)} "
        f"({fmt(t.tokens_per_second)} tokens/s)",
        "forgetting mitigations": ", ".join(mitigations) if mitigations else "none",
        "environment": ", ".join(f"{k} {v}" for k, v in env.items() if v is not None) or None,
        "whole run": fmt_seconds(r.wall_seconds) if r.wall_seconds else None,
        "tunelab": r.tunelab_version,
    }
    return f"{head}\n\n{_bullets(items)}"


def _export_section(exported: Mapping[str, Any]) -> str:
    q = exported.get("quantization")
    lines = [
        "## Export",
        "",
        f"- **from**: `{exported.get('from')}`",
        f"- **weights**: {exported.get('weights')}"
        + (" (LoRA merged with peft `merge_and_unload`)" if exported.get("merged_lora") else ""),
        f"- **parameters**: {fmt(exported.get('parameters'))}",
    ]
    if q:
        lines.append(f"- **quantisation**: {q['library']} {q['version']}, {q['scheme']}; "
                     f"{q['layers']}")  # fmt: skip
    software = (f"tunelab {exported.get('tunelab_version')}, torch {exported.get('torch')}, "
                f"transformers {exported.get('transformers')}")  # fmt: skip
    lines.append(f"- **software**: {software}")
    return "\n".join(lines)


def _bullets(items: Mapping[str, Any]) -> str:
    """``- **key**: value`` lines for the items that have a value."""
    return "\n".join(f"- **{k}**: {v}" for k, v in items.items() if v)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        text = "—" if value is None or value == "" else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) if h else " " for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
