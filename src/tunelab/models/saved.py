"""Save and load a fine-tuned model folder (``<run>/model/``).

The folder is a normal Hugging Face folder: a PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``) for LoRA, or full weights (``model.safetensors``) for full
fine-tuning, plus the tokenizer, ``classifier.safetensors`` for a classifier head, and
``tunelab_model.json`` describing how to rebuild and prompt it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from tunelab.errors import ModelError
from tunelab.models.loading import load_base, tokenizer_from
from tunelab.models.task_model import TaskModel

__all__ = [
    "CALIBRATION_FILE",
    "INFO_FILE",
    "is_trained_folder",
    "load_trained",
    "read_temperature",
    "save_temperature",
    "save_trained",
]

INFO_FILE = "tunelab_model.json"


def save_trained(model: TaskModel, tokenizer: Any, folder: Path, info: dict[str, Any]) -> Path:
    """Write ``folder`` atomically (temporary folder, then rename)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if info["kind"] in ("lora", "full"):
        model.lm.save_pretrained(tmp)
    if model.classifier is not None:
        save_file(
            {k: v.contiguous() for k, v in model.classifier.state_dict().items()},
            tmp / "classifier.safetensors",
        )
    tokenizer.save_pretrained(tmp)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False))
    replace_folder(tmp, folder)
    return folder


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` (replacing what was there) with the usual file
    modes: transformers writes weights through a 0600 temporary file."""
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


def is_trained_folder(path: Path) -> bool:
    return (path / INFO_FILE).is_file()


def load_trained(folder: Path) -> tuple[TaskModel, Any, dict[str, Any]]:
    """Rebuild the TaskModel saved in ``folder`` (or in ``folder/model`` for a run folder)."""
    if not is_trained_folder(folder) and is_trained_folder(folder / "model"):
        folder = folder / "model"
    if not is_trained_folder(folder):
        raise ModelError(
            f"{folder} is not a tunelab model folder (no {INFO_FILE})",
            hint="pass a run folder or its model/ folder",
        )
    info = json.loads((folder / INFO_FILE).read_text())
    tokenizer = tokenizer_from(folder)
    if info["kind"] == "full":
        lm: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        lm = load_base(info["base"])
        if info["kind"] == "lora":
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, folder)
    classifier = None
    if info["head"] == "classifier":
        state = load_file(folder / "classifier.safetensors")
        classifier = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        classifier.load_state_dict(state)
    model = TaskModel(lm, info["head"], classifier)
    model.eval()
    return model, tokenizer, info


CALIBRATION_FILE = "calibration.json"


def save_temperature(model_dir: Path, report: dict[str, Any]) -> None:
    """Keep the fitted temperature beside the weights (``model/calibration.json``)."""
    keep: dict[str, Any] = {k: report.get(k) for k in ("temperature", "bins", "n_fit", "fit_split")}
    keep["after"] = report.get("after")
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(keep, indent=2))


def read_temperature(model_dir: Path | None) -> float:
    """The saved temperature of a model folder (or a run folder's ``model/``); 1.0 if none."""
    if model_dir is None:
        return 1.0
    for folder in (model_dir, model_dir / "model"):
        if (folder / CALIBRATION_FILE).is_file():
            return float(json.loads((folder / CALIBRATION_FILE).read_text())["temperature"])
    return 1.0
