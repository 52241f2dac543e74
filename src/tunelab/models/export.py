"""Export a fine-tuned model as a standalone Hugging Face folder (``tunelab export``).

The exported folder loads with plain ``transformers`` (``AutoModelForCausalLM`` and
``AutoTokenizer.from_pretrained(folder)``), with neither tunelab nor peft installed:

- LoRA adapters are merged into the base weights (peft ``merge_and_unload``:
  ``W' = W + (alpha / r) * B @ A`` for every adapted linear layer); full and frozen runs
  keep their weights as they are. Weights are saved as safetensors, in fp32 by default.
- ``quantize="int8"``: weight-only int8 (per output channel, symmetric) of every linear
  layer but the output head, with torchao through transformers' ``TorchAoConfig``; the
  folder is still safetensors and loads with plain transformers once torchao is installed.
- beside the weights: the tokenizer with its chat template, ``generation_config.json``
  (greedy, tunelab's default repetition penalty), ``tunelab_model.json`` with an
  ``exported`` section, ``calibration.json`` and ``classifier.safetensors`` when the model
  has them, and a model card ``README.md`` built from the run's ``results.json``.

The folder is written beside ``out`` and renamed into place, so ``out`` is either the old
folder or the complete new one. See docs/export.md.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoModelForCausalLM, GenerationConfig

from tunelab import __version__
from tunelab.assess import CALIBRATION_FILE
from tunelab.errors import ConfigError, DependencyError, ModelError
from tunelab.inference import reply
from tunelab.models.registry import ALIASES
from tunelab.models.saved import INFO_FILE, is_trained_folder, load_trained
from tunelab.report._format import ci_text, fmt, fmt_metric, fmt_seconds

__all__ = ["CLASSIFIER_FILE", "QUANTIZATIONS", "export_model", "folder_bytes", "model_card"]

QUANTIZATIONS = ("int8",)
CLASSIFIER_FILE = "classifier.safetensors"
CARD_FILE = "README.md"

# Hub ids of the built-in aliases, for the card's ``base_model`` (the alias weights are a
# GGUF build of this model, dequantised to fp32; the card says so).
_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_REPLY = inspect.signature(reply).parameters  # tunelab's own decoding defaults


def export_model(
    source: Path, out: Path, *, quantize: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Write the standalone folder ``out`` from a run folder or a tunelab model folder.

    Returns facts about it: ``bytes`` on disk, ``parameters``, ``files``, ``seconds``,
    ``quantize``, ``source`` and ``out``. Raises ModelError for a folder that holds no
    tunelab model, ConfigError for a non-empty ``out`` (unless ``overwrite``) or an
    unknown ``quantize``, DependencyError when torchao is missing for int8.
    """
    started = time.perf_counter()
    model_dir = find_model_folder(source)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(
            f"--quantize {quantize!r} is not supported",
            hint=f"choose one of: {', '.join(QUANTIZATIONS)} (or leave it out for fp32)",
        )
    check_target(out, model_dir, overwrite=overwrite)
    results = read_results(model_dir)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    staging = out.with_name(f".{out.name}.fp32-{os.getpid()}")
    for folder in (tmp, staging):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        model, tokenizer, info = load_trained(model_dir)
        lm = standalone_lm(model.lm)
        parameters = sum(p.numel() for p in lm.parameters())
        write_weights(lm, tmp, quantize=quantize, staging=staging)
        del model, lm
        tokenizer.save_pretrained(tmp)
        generation_config(tokenizer).save_pretrained(tmp)
        for name in (CALIBRATION_FILE, CLASSIFIER_FILE):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        exported = export_facts(model_dir, info, quantize, parameters, results)
        (tmp / INFO_FILE).write_text(
            json.dumps(exported_info(info, exported), indent=2, ensure_ascii=False)
        )
        calibration = _read_json(model_dir / CALIBRATION_FILE)
        (tmp / CARD_FILE).write_text(model_card(info, exported, results, calibration))
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "source": str(model_dir),
        "out": str(out),
        "kind": info["kind"],
        "head": info["head"],
        "quantize": quantize,
        "weights": exported["weights"],
        "parameters": parameters,
        "bytes": folder_bytes(out),
        "files": sorted(p.name for p in out.iterdir()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def find_model_folder(source: Path) -> Path:
    """The tunelab model folder of ``source``: itself, or ``source/model`` for a run."""
    if not source.exists():
        raise ModelError(f"{source} does not exist", hint="pass a run folder or its model/ folder")
    for folder in (source, source / "model"):
        if is_trained_folder(folder):
            return folder
    raise ModelError(
        f"{source} is not a tunelab run or model folder (no {INFO_FILE} in it or in model/)",
        hint="pass a run folder (runs/<name>) or its model/ folder, written by `tunelab run` "
        "or `tunelab train`",
    )


def check_target(out: Path, model_dir: Path, *, overwrite: bool) -> None:
    """Refuse an ``out`` that would replace the source or non-empty data without consent."""
    target, src = out.resolve(), model_dir.resolve()
    if target == src or target in src.parents:
        raise ConfigError(
            f"--out {out} holds the model being exported ({model_dir})",
            hint="export to a new folder, e.g. --out exported/<name>",
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ConfigError(
                f"--out {out} already exists and is not empty",
                hint="choose another --out, or pass --force to replace it",
            )
        if not out.is_dir():
            raise ConfigError(f"--out {out} is a file", hint="choose a folder path for --out")


def read_results(model_dir: Path) -> dict[str, Any] | None:
    """The run's ``results.json`` (in the parent of ``model/``), or None when absent."""
    return _read_json(model_dir.parent / "results.json")


def standalone_lm(lm: Any) -> Any:
    """A plain transformers model: LoRA adapters merged into the weights, else ``lm``."""
    if hasattr(lm, "merge_and_unload"):  # a peft PeftModel
        return lm.merge_and_unload()
    return lm


def write_weights(lm: Any, folder: Path, *, quantize: str | None, staging: Path) -> None:
    """``config.json`` + ``model.safetensors`` of ``lm`` in ``folder``: fp32 as it is, or
    int8 through an fp32 copy in ``staging`` that transformers quantises while loading."""
    if quantize is None:
        lm.save_pretrained(folder)
        return
    lm.save_pretrained(staging)
    quantize_int8(staging).save_pretrained(folder)


def quantize_int8(fp32_dir: Path) -> Any:
    """Load ``fp32_dir`` with torchao int8 weight-only quantisation of the linear layers.

    transformers quantises while loading (``TorchAoConfig``; the output head and the
    embeddings stay fp32) and records the scheme in ``config.json``, so ``save_pretrained``
    writes safetensors that ``from_pretrained`` turns back into int8 tensors unprompted.
    """
    try:
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig
    except ImportError as exc:
        raise DependencyError(
            f"--quantize int8 needs torchao ({exc})", hint="pip install 'torchao>=0.10'"
        ) from exc
    config = TorchAoConfig(Int8WeightOnlyConfig())
    return AutoModelForCausalLM.from_pretrained(
        fp32_dir, dtype=torch.float32, quantization_config=config
    )


def generation_config(tokenizer: Any) -> GenerationConfig:
    """tunelab's decoding defaults (``inference.reply``): greedy, repetition penalty."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        repetition_penalty=_REPLY["repetition_penalty"].default,
        max_new_tokens=_REPLY["max_new_tokens"].default,
    )


def export_facts(
    model_dir: Path,
    info: Mapping[str, Any],
    quantize: str | None,
    parameters: int,
    results: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``exported`` section of the exported ``tunelab_model.json``."""
    quantization = None
    if quantize == "int8":
        import torchao

        quantization = {
            "library": "torchao",
            "version": torchao.__version__,
            "scheme": "Int8WeightOnlyConfig: int8 weights, one fp32 scale per output channel "
            "(symmetric); activations stay fp32",
            "layers": "every nn.Linear except the output head; embeddings and norms stay fp32",
            "load_needs": "pip install torchao",
        }
    return {
        "from": str(model_dir.resolve()),
        "run": (results or {}).get("run"),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunelab_version": __version__,
        "kind_before_export": info["kind"],
        "merged_lora": info["kind"] == "lora",
        "weights": "int8 weight-only (torchao)" if quantize else "fp32",
        "quantization": quantization,
        "parameters": parameters,
        "classifier_head": info["head"] == "classifier",
        "torch": torch.__version__,
        "transformers": _version("transformers"),
    }


def exported_info(info: Mapping[str, Any], exported: Mapping[str, Any]) -> dict[str, Any]:
    """``tunelab_model.json`` of the export: the folder now holds full weights (kind
    ``full``), so tunelab loads it too; the original kind is in ``exported``."""
    return {**info, "kind": "full", "exported": dict(exported)}


def folder_bytes(folder: Path) -> int:
    """Size on disk of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` with the usual file modes (transformers writes
    weights through a 0600 temporary file)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    tmp.chmod(0o777 & ~umask)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})", hint="re-run the stage that "
                         "wrote it, or move it away to export without it") from exc  # fmt: skip
    return data if isinstance(data, dict) else None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---- the model card --------------------------------------------------------------------


def model_card(
    info: Mapping[str, Any],
    exported: Mapping[str, Any],
    results: Mapping[str, Any] | None,
    calibration: Mapping[str, Any] | None = None,
) -> str:
    """``README.md`` of the export: Hub front matter, then the run's measurements.

    ``results`` is the run's ``results.json`` (None for a bare model folder: every
    measured section then says it is absent); ``calibration`` the model's calibration.json.
    """
    r = results or {}
    name = r.get("run") or "tunelab model"
    sections = [
        _front_matter(info, exported),
        f"# {name}\n\n{_summary(info, exported, r)}",
        _usage(info, exported, r),
        _test_metrics(r, quantized=bool(exported.get("quantization"))),
        _compare(r),
        _calibration(r, calibration),
        _forgetting(r),
        _data(r),
        _training(info, r),
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


def _summary(info: Mapping[str, Any], exported: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    kind = {"lora": "LoRA (adapters merged into the weights)", "full": "full fine-tuning",
            "frozen": "frozen base (only the classifier head was trained)"}  # fmt: skip
    source = (r.get("model") or {}).get("source")
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


def _usage(info: Mapping[str, Any], exported: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    samples = (r.get("tuned") or {}).get("samples") or [{}]
    prompt = samples[0].get("prompt") or "Hello! What can you do?"
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


def _absent(what: str, r: Mapping[str, Any]) -> str:
    why = ("this run did not measure it" if r else
           "the model folder had no results.json beside it; export the run folder")  # fmt: skip
    return f"Not in this export: {what} ({why})."


def _scalar_metrics(block: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in (block.get("metrics") or {}).items() if isinstance(v, int | float)}


def _with_ci(value: Any, ci: Any, *, signed: bool = False) -> str:
    """``0.860 [0.828, 0.892]``; the value alone when there is no interval."""
    return f"{fmt_metric(value, signed=signed)} {ci_text(ci)}".strip()


def _test_metrics(r: Mapping[str, Any], *, quantized: bool) -> str:
    head = "## Test metrics"
    tuned, base = r.get("tuned") or {}, r.get("base") or {}
    if not tuned:
        return f"{head}\n\n{_absent('test metrics', r)}"
    rows = []
    for key, value in _scalar_metrics(tuned).items():
        before = _scalar_metrics(base).get(key)
        delta = fmt_metric(value - before, signed=True) if before is not None else "—"
        rows.append([key, _with_ci(before, (base.get("ci95") or {}).get(key)) if base else "—",
                     _with_ci(value, (tuned.get("ci95") or {}).get(key)), delta])  # fmt: skip
    note = (f"On the test split ({fmt(tuned.get('n'))} examples); 95% bootstrap intervals in "
            "brackets. Base: the base model zero-shot.")  # fmt: skip
    if quantized:
        note += " Measured by the run on the fp32 model, before int8 quantisation."
    table = _md_table(["metric", "base (zero-shot)", "fine-tuned", "Δ"], rows)
    return f"{head}\n\n{note}\n\n{table}"


def _compare(r: Mapping[str, Any]) -> str:
    head = "## Fine-tuning vs few-shot prompting"
    c = r.get("compare") or {}
    if not c.get("rows"):
        return f"{head}\n\n{_absent('the compare table', r)}"
    primary = c.get("primary", "")
    rows = [
        [row.get("name"), row.get("shots"),
         _with_ci((row.get("metrics") or {}).get(primary), (row.get("ci95") or {}).get(primary)),
         fmt(row.get("prompt_tokens")), fmt(row.get("ms_per_example")),
         fmt(row.get("latency_ms"))]
        for row in c["rows"]
    ]  # fmt: skip
    table = _md_table(["setting", "shots", f"{primary} [95% CI]", "prompt tokens",
                       "ms/example (batched)", "latency ms (batch 1)"], rows)  # fmt: skip
    text = f"{head}\n\nOn {fmt(c.get('n'))} test examples.\n\n{table}"
    if c.get("conclusion"):
        text += f"\n\n**Verdict:** {c['conclusion']}."
    for skipped in c.get("skipped") or []:
        text += f"\n\n- skipped: {skipped}"
    return text


def _calibration(r: Mapping[str, Any], saved: Mapping[str, Any] | None) -> str:
    head = "## Calibration"
    report = r.get("calibration") or saved
    if not report:
        return f"{head}\n\n{_absent('a calibration temperature', r)}"
    keys = ["ece", "brier", "nll", "accuracy", "mean_confidence"]
    rows = [[side, *(fmt_metric((report.get(side) or {}).get(k)) for k in keys)]
            for side in ("before", "after") if report.get(side)]  # fmt: skip
    text = (f"{head}\n\nTemperature **{fmt(report.get('temperature'))}**, fitted on "
            f"{fmt(report.get('n_fit'))} {report.get('fit_split', 'val')} examples "
            f"(min NLL); scores on the test split.")  # fmt: skip
    if rows:
        text += "\n\n" + _md_table(["", "ECE", "Brier", "NLL", "accuracy", "mean confidence"],
                                   rows)  # fmt: skip
    text += (f"\n\nThe temperature is in `{CALIBRATION_FILE}`; plain transformers does not "
             "apply it: divide the label logits by it before the softmax.")  # fmt: skip
    return text


def _forgetting(r: Mapping[str, Any]) -> str:
    head = "## Forgetting (retention of general abilities)"
    f = r.get("forgetting") or {}
    if not f.get("probes"):
        return f"{head}\n\n{_absent('the retention suite', r)}"
    rows = [
        [name, p.get("metric"), fmt_metric(p.get("base")), fmt_metric(p.get("tuned")),
         _with_ci(p.get("delta"), p.get("ci95"), signed=True),
         _with_ci(p.get("retention"), p.get("retention_ci95")),
         "higher" if p.get("higher_is_better") else "lower"]
        for name, p in f["probes"].items()
    ]  # fmt: skip
    table = _md_table(["probe", "metric", "base", "fine-tuned", "Δ [95% CI]",
                       "retention [95% CI]", "better"], rows)  # fmt: skip
    score = _with_ci(f.get("retention_score"), f.get("retention_ci95"))
    text = (f"{head}\n\n**Retention score: {score}** (1.0 = kept everything; over "
            f"{fmt(f.get('n_probes_in_score'))} probes).\n\n{table}")  # fmt: skip
    for note in f.get("notes") or []:
        text += f"\n\n- {note}"
    return text


def _data(r: Mapping[str, Any]) -> str:
    head = "## Data"
    d = r.get("data") or {}
    if not d:
        return f"{head}\n\n{_absent('the data card', r)}"
    dropped: dict[str, int] = {}
    for task in (d.get("tasks") or {}).values():
        for part in ("recipe_dropped", "dropped", "leakage_removed"):
            for reason, n in (task.get(part) or {}).items():
                dropped[reason] = dropped.get(reason, 0) + int(n)
    splits = d.get("splits") or {}
    pii = d.get("pii") or {}
    found = ", ".join(f"{k} {v}" for k, v in (pii.get("found") or {}).items()) or "none"
    items = {
        "source": d.get("format_note"),
        "rows": f"{fmt(d.get('rows_in'))} read, {fmt(d.get('rows_kept'))} kept",
        "splits": ", ".join(f"{k} {fmt(v)}" for k, v in splits.items()),
        "split method": d.get("split_method"),
        "dropped": "; ".join(f"{k}: {fmt(v)}" for k, v in dropped.items()) or "nothing",
        "PII": f"policy {pii.get('policy')}, found {found}" if pii else None,
        "label balance": "; ".join(
            f"{split}: " + ", ".join(f"{k} {fmt(v)}" for k, v in counts.items())
            for split, counts in (d.get("label_balance") or {}).items()
        ),
        "data hash": f"`{d['hash']}`" if d.get("hash") else None,
    }
    text = f"{head}\n\n{_bullets(items)}"
    for warning in d.get("warnings") or []:
        text += f"\n- warning: {warning}"
    return text


def _training(info: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    head = "## Training"
    t = r.get("training") or {}
    if not t:
        return f"{head}\n\n{_absent('training facts', r)}"
    env = r.get("environment") or {}
    mitigations = (r.get("mitigations") or {}).get("used")
    trainable, total = r.get("trainable_params"), r.get("total_params")
    items = {
        "method": f"{info['kind']}, head {info['head']}",
        "trainable parameters": f"{fmt(trainable)} of {fmt(total)}" if trainable else None,
        "steps": f"{fmt(t.get('steps'))} ({t.get('stopped')}); kept step "
        f"{fmt(t.get('best_step'))}, val loss {fmt(t.get('best_val_loss'))}",
        "tokens": f"{fmt(t.get('tokens'))} in {fmt_seconds(t.get('seconds'))} "
        f"({fmt(t.get('tokens_per_second'))} tokens/s)",
        "forgetting mitigations": ", ".join(mitigations) if mitigations else "none",
        "environment": ", ".join(f"{k} {v}" for k, v in env.items()) or None,
        "whole run": fmt_seconds(r.get("wall_seconds")) if r.get("wall_seconds") else None,
        "tunelab": r.get("tunelab_version"),
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
