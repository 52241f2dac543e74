"""What every verb that touches a model starts from: the prepared data, the tokenizer,
the encoded splits, the device and precision (:func:`setup`), and the model training
starts from (:func:`start_model`). ``run``, ``eval``, ``compare``, ``calibrate``,
``forgetting sweep``, ``distill`` and ``bench`` build on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab import __version__
from tunelab.config import Config
from tunelab.data.prepare import Prepared, prepare, read_prepared
from tunelab.data.token_cache import cached_encode, tokenizer_fingerprint
from tunelab.data.tokenize import Encoded, PromptFormatter, encode, label_token_ids
from tunelab.evaluation.evaluate import EvalSettings
from tunelab.models.loading import load_tokenizer
from tunelab.models.precision import resolve_precision
from tunelab.models.task_model import TaskModel, build_task_model
from tunelab.recipes.builders import data_spec, eval_settings

__all__ = [
    "Setup",
    "TaskData",
    "encode_splits",
    "model_info",
    "prepare_stage",
    "set_threads",
    "setup",
    "start_model",
]


@dataclass
class TaskData:
    """Prepared splits plus their token ids, for one tokenizer."""

    prepared: Prepared
    encoded: dict[str, list[Encoded]]
    label_ids: list[list[int]] | None


def set_threads(threads: int | None) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def prepare_stage(cfg: Config, run_dir: Path, *, reuse: bool) -> Prepared:
    """Prepare data into ``run_dir/data`` (or reuse what a previous attempt wrote)."""
    folder = run_dir / "data"
    if reuse and (folder / "prepared.json").is_file():
        return read_prepared(folder)
    return prepare(data_spec(cfg), folder, tokenizer=load_tokenizer(cfg.model.base))


def encode_splits(cfg: Config, prep: Prepared, tokenizer: Any) -> TaskData:
    formatter = PromptFormatter(tokenizer, cfg.model.use_chat_template)
    key = [prep.hash, tokenizer_fingerprint(tokenizer), str(formatter.chat),
           str(cfg.model.max_length), ",".join(prep.labels or [])]  # fmt: skip
    encoded, _cached = cached_encode(
        prep.splits,
        lambda ex: encode(
            tokenizer, formatter, ex, max_length=cfg.model.max_length, labels=prep.labels
        ),
        key_parts=key,
    )
    label_ids = label_token_ids(tokenizer, prep.words) if prep.words else None
    if cfg.method.head == "classifier":  # the head reads the prompt; response tokens unused
        encoded = {k: [e.prompt_only() for e in v] for k, v in encoded.items()}
    return TaskData(prep, encoded, label_ids)


def model_info(cfg: Config, prep: Prepared) -> dict[str, Any]:
    """What ``tunelab_model.json`` records to rebuild and prompt the model."""
    return {
        "base": cfg.model.base,
        "kind": cfg.method.kind,
        "head": cfg.method.head,
        "format": prep.format,
        "labels": prep.labels,
        "label_words": prep.label_words,
        "template": prep.card.get("template"),
        "system_prompt": cfg.data.system_prompt,
        "use_chat_template": cfg.model.use_chat_template,
        "max_length": cfg.model.max_length,
        "tunelab_version": __version__,
        "data_hash": prep.hash,
    }


def start_model(cfg: Config, lm: Any, task: TaskData) -> TaskModel:
    """The model training starts from: ``lm`` adapted for ``method``, seeded, so a resumed
    run and ``forgetting sweep`` rebuild exactly the same start (LoRA initialisation)."""
    torch.manual_seed(cfg.train.seed)
    return build_task_model(
        lm,
        kind=cfg.method.kind,
        head=cfg.method.head,
        label_token_ids=[ids[0] for ids in task.label_ids] if task.label_ids else None,
        lora_r=cfg.method.lora.r,
        lora_alpha=cfg.method.lora.alpha,
        lora_dropout=cfg.method.lora.dropout,
        lora_targets=cfg.method.lora.targets,
        lora_layers=cfg.method.lora.layers,
    )


@dataclass
class Setup:
    """What every stage needs: prepared data, tokenizer, token ids, device, precision."""

    prep: Prepared
    tokenizer: Any
    task: TaskData
    device: torch.device
    precision: str
    ev: EvalSettings
    threads: int


def setup(
    cfg: Config,
    *,
    reuse_data: bool,
    threads: int | None,
    tokenizer: Any = None,
    device: torch.device | None = None,
) -> Setup:
    n_threads = set_threads(threads)
    prep = prepare_stage(cfg, cfg.run_dir, reuse=reuse_data)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.base)
    task = encode_splits(cfg, prep, tokenizer)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.train.precision, device)
    ev = eval_settings(cfg, precision, tokenizer.pad_token_id, prep.labels is not None)
    return Setup(prep, tokenizer, task, device, precision, ev, n_threads)
