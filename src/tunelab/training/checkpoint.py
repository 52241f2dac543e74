"""Atomic, resumable checkpoints.

Layout of ``checkpoints/``::

    step-000050/              one folder per saved step
      trainable.safetensors   the parameters training changes (adapters, head or all)
      extra.safetensors       state of the forgetting mitigations (Fisher, importances)
      optimizer.pt            optimizer and LR-scheduler state
      rng.pt                  torch / python RNG states (dropout resumes identically)
      state.json              step, epoch, position in the epoch, best val loss, ...
      config.resolved.yaml    the config that produced it
    latest.json               {"last": "step-000050", "best": "step-000040"}

A folder is written under a temporary name and renamed when complete; ``latest.json`` is
replaced atomically after that. A crash at any instant leaves the previous pointer and
every folder it names intact. Stale temporary folders are removed on the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunelab.errors import CheckpointError

__all__ = [
    "TrainState",
    "load_checkpoint",
    "load_extra_state",
    "load_weights",
    "read_pointer",
    "save_checkpoint",
]

POINTER = "latest.json"
EXTRA = "extra.safetensors"


@dataclass
class TrainState:
    """Loop counters saved in every checkpoint (plain values only)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch index
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    tokens: int = 0  # real (non-padding) tokens trained on
    padded_tokens: int = 0  # tokens computed, padding included (rows x width of each piece)
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validations since the last improvement
    elapsed: float = 0.0  # seconds of training so far
    stopped: str | None = None  # why training ended, once it has


def save_checkpoint(
    root: Path,
    *,
    state: TrainState,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    config_yaml: str,
    is_best: bool,
    keep: int,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``root/step-N`` atomically, update the pointer, prune old step folders."""
    name = f"step-{state.step:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {k: v.contiguous().cpu() for k, v in trainable.items()}
        save_file(tensors, tmp / "trainable.safetensors")
        if extra:
            save_file({k: v.contiguous().cpu() for k, v in extra.items()}, tmp / EXTRA)
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        (tmp / "config.resolved.yaml").write_text(config_yaml)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. the final save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = read_pointer(root)
        new = {"last": name, "best": name if is_best else pointer.get("best")}
        _write_json_atomic(root / POINTER, new)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint {final}: {exc.strerror or exc}",
            hint="free disk space or fix permissions; the previous checkpoint is intact",
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, new, keep)
    return final


def read_pointer(root: Path) -> dict[str, str | None]:
    path = root / POINTER
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
    return data if isinstance(data, dict) else {}


def load_checkpoint(folder: Path) -> tuple[TrainState, dict[str, torch.Tensor], dict[str, Any]]:
    """State, trainable tensors and optimizer state of one step folder; restores RNGs."""
    needed = ["trainable.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
    state = TrainState(**json.loads((folder / "state.json").read_text()))
    trainable = load_file(folder / "trainable.safetensors")
    optimizer = torch.load(folder / "optimizer.pt", weights_only=False)
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return state, trainable, optimizer


def load_extra_state(folder: Path) -> dict[str, torch.Tensor]:
    """The mitigations' tensors of a step folder (empty when the run had none)."""
    path = folder / EXTRA
    return load_file(path) if path.is_file() else {}


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Only the trainable tensors of a step folder (no optimizer state, RNGs untouched)."""
    path = folder / "trainable.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {path.name}")
    return load_file(path)


def _prune(root: Path, pointer: dict[str, str | None], keep: int) -> None:
    steps = sorted(p.name for p in root.glob("step-*") if p.is_dir())
    protected = {pointer.get("best"), pointer.get("last"), *steps[-keep:]}
    for name in steps:
        if name not in protected:
            shutil.rmtree(root / name, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
