"""The import contract (pyproject's [tool.importlinter], run by `make test`) holds, and it
fails when an upward import or a cycle is added: checked on a copy of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "tunelab", tmp_path / "src" / "tunelab",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_package_keeps_its_layers(copy: Path) -> None:
    out = _lint(copy)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(copy: Path) -> None:
    # models sits below recipes: a model module reading the run recipe is an upward import
    _append(copy / "src/tunelab/models/loss.py", "import tunelab.recipes.run  # noqa")
    out = _lint(copy)
    assert out.returncode != 0
    assert "layers: imports point down only BROKEN" in out.stdout
    assert "tunelab.models.loss -> tunelab.recipes.run" in out.stdout


def test_a_lazy_import_that_closes_a_cycle_breaks_the_contract(copy: Path) -> None:
    # inside a function, as a lazy import written to dodge a cycle would be
    _append(copy / "src/tunelab/config/section.py",
            "def _late():\n    from tunelab.config import schema  # noqa")  # fmt: skip
    out = _lint(copy)
    assert out.returncode != 0
    assert "no import cycles among sibling modules, at any depth BROKEN" in out.stdout
