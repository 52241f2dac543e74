"""Atomic, resumable checkpoints.

Layout of ``checkpoints/``::

    step-000050/              one folder per saved step
      trainable.safetensors   the parameters training changes (adapters, head or all)
      extra.safetensors       state of the forgetting mitigations (Fisher, importances)
      optimizer.pt            optimizer and LR-scheduler state
      rng.pt                  torch / python RNG states of every rank (dropout resumes
                              identically)
      state.json              step, epoch, position in the epoch, best val loss, ...
      config.resolved.yaml    the config that produced it
    latest.json               {"last": "step-000050", "best": "step-000040"}

A folder is written under a temporary name, its files fsynced, and renamed when complete;
``latest.json`` is replaced atomically after that. Folders leave the ``step-*`` namespace the
same way: renamed to a temporary name first, deleted after. So a crash at any instant (kill
-9 included) leaves the previous pointer, every folder it names and every ``step-*`` folder
complete; only ``.tmp-*`` entries can be half-written, and the next save removes them.
``scripts/fault_trials.py`` checks this by killing real runs (docs/faults.md).

A write that fails (disk full, file too large, no permission) raises :class:`CheckpointError`
naming the folder; the previous checkpoint stays intact and resumable.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunelab.errors import CheckpointError

__all__ = [
    "TrainState",
    "load_checkpoint",
    "load_extra_state",
    "load_weights",
    "read_pointer",
    "rng_state",
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
    skipped: int = 0  # steps whose batch gave a non-finite loss or gradient (nonfinite: skip)
    world: int = 1  # processes of the data-parallel job that saved it
    sharded: bool = False  # saved by an FSDP job (its optimizer state is keyed by name)
    # MiB of parameters, gradients and optimizer state this rank held at its first step
    held_mb: float | None = None


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
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``root/step-N`` atomically, update the pointer, prune old step folders.

    ``rng``: :func:`rng_state` of every rank of a data-parallel job, rank 0 first (default:
    this process's).
    """
    name = f"step-{state.step:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    final = root / name
    tensors = {k: v.contiguous().cpu() for k, v in trainable.items()}
    extra_tensors = {k: v.contiguous().cpu() for k, v in (extra or {}).items()}
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(tensors, tmp / "trainable.safetensors")
        if extra_tensors:
            save_file(extra_tensors, tmp / EXTRA)
        _torch_save(optimizer, tmp / "optimizer.pt")
        _torch_save({"ranks": rng or [rng_state()]}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        (tmp / "config.resolved.yaml").write_text(config_yaml)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (a killed run had renamed it, not yet pointed)
            _discard(final)
        os.replace(tmp, final)
        pointer = read_pointer(root)
        new = {"last": name, "best": name if is_best else pointer.get("best")}
        _write_json_atomic(root / POINTER, new)
    # safetensors reports a full disk as its own error, not OSError
    except (OSError, SafetensorError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint {final}: {_reason(exc)}{_free_space(root)}",
            hint="free disk space or fix permissions, then continue with --resume; the "
            "previous checkpoint is intact",
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


def rng_state() -> dict[str, Any]:
    """This process's RNG states (what a resumed run restores)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def load_checkpoint(
    folder: Path, *, rank: int = 0, world: int = 1, sharded: bool = False
) -> tuple[TrainState, dict[str, torch.Tensor], dict[str, Any]]:
    """State, trainable tensors and optimizer state of one step folder; restores the RNGs
    of ``rank``. A checkpoint resumes only with the number of processes that saved it, and
    with FSDP (``sharded``) only if FSDP saved it."""
    needed = ["trainable.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
    state = TrainState(**json.loads((folder / "state.json").read_text()))
    trainable = load_file(folder / "trainable.safetensors")
    optimizer = torch.load(folder / "optimizer.pt", weights_only=False)
    if state.world != world:
        raise CheckpointError(
            f"checkpoint {folder} was saved by {state.world} process(es); this run has {world}",
            hint=f"resume with the same number of processes (--nproc {state.world})",
        )
    if state.sharded != sharded:
        saved_by, now = ("fsdp", "ddp") if state.sharded else ("ddp", "fsdp")
        raise CheckpointError(
            f"checkpoint {folder} was saved by a train.parallel: {saved_by} run; this run "
            f"uses {now}",
            hint=f"resume with train.parallel: {saved_by}",
        )
    saved = torch.load(folder / "rng.pt", weights_only=False)
    rng = saved["ranks"][rank] if "ranks" in saved else saved  # older single-process files
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
            _discard(root / name)
    for stale in root.glob(".tmp-*"):  # left by a killed process (another pid)
        if not stale.name.endswith(f"-{os.getpid()}"):
            _remove(stale)


def _discard(folder: Path) -> None:
    """Delete ``folder`` so that a kill half-way leaves no partial ``step-*`` folder: rename it
    out of the namespace first (atomic), then delete."""
    trash = folder.with_name(f".tmp-trash-{folder.name}-{os.getpid()}")
    _remove(trash)
    try:
        os.replace(folder, trash)
    except OSError:
        return  # already gone; a folder we cannot rename is left whole
    _remove(trash)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _torch_save(obj: Any, path: Path) -> None:
    # through a Python file, a failed write's OSError (ENOSPC, EFBIG) is raised or kept as
    # the context of torch's "unexpected pos" RuntimeError; torch.save(obj, path) loses it
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def _reason(exc: BaseException) -> str:
    inner: BaseException | None = exc
    for _ in range(8):  # torch.save wraps its file's OSError in "unexpected pos" errors
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
        inner = None if inner is None else inner.__cause__ or inner.__context__
    text = str(exc).strip()
    code = re.search(r"os error (\d+)", text)  # safetensors: "I/O error: ... (os error 28)"
    if code:
        return os.strerror(int(code.group(1)))
    return text.splitlines()[0] if text else type(exc).__name__


def _free_space(root: Path) -> str:
    try:
        free = shutil.disk_usage(root if root.exists() else root.parent).free
    except OSError:
        return ""
    return f" ({free / 2**20:.0f} MiB free on that disk)"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")  # .tmp-*: pruned if left behind
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself (a rename that a power loss can
    undo, or that lands before the data, would make the folder look complete too early)."""
    for file in folder.iterdir():
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
