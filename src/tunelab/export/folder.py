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
  has them, and a model card ``README.md`` built from the run's ``results.json``
  (:mod:`tunelab.export.model_card`).

The folder is written beside ``out`` and renamed into place, so ``out`` is either the old
folder or the complete new one. See docs/export.md.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from tunelab import __version__
from tunelab.errors import ConfigError, DependencyError, ModelError
from tunelab.export.model_card import CARD_FILE, CLASSIFIER_FILE, model_card
from tunelab.models.generation import reply
from tunelab.models.saved import (
    CALIBRATION_FILE,
    INFO_FILE,
    is_trained_folder,
    load_trained,
    replace_folder,
)
from tunelab.results import Results, read_results

__all__ = ["QUANTIZATIONS", "export_model", "folder_bytes"]

QUANTIZATIONS = ("int8",)
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
    results = read_run_results(model_dir)
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
        replace_folder(tmp, out)
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


def read_run_results(model_dir: Path) -> Results | None:
    """The run's ``results.json`` (in the parent of ``model/``), or None when absent."""
    path = model_dir.parent / "results.json"
    return read_results(path) if path.is_file() else None


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
    results: Results | None,
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
        "run": results.run if results else None,
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
