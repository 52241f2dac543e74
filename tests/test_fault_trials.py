"""Kill -9 trials in CI: a few runs of ``scripts/fault_trials.py`` (the full 20 trials and
their figures are in docs/faults.md), and the checker it relies on catching what it must."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tunelab.training.checkpoint import TrainState, save_checkpoint

pytestmark = pytest.mark.faults

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_trials.py"


@pytest.fixture(scope="module")
def trials():
    spec = importlib.util.spec_from_file_location("fault_trials", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_trials"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform != "linux", reason="forks and SIGKILLs training children")
def test_killed_runs_resume_to_the_reference_weights(
    trials, tmp_path, tiny_model_dir, sentiment_file
):
    settings = trials.Settings(steps=16, eval_every=2, max_kills=2)
    summary = trials.run_trials(tmp_path, trials=3, seed=1, s=settings,
                                model_dir=tiny_model_dir, data=sentiment_file)  # fmt: skip
    assert summary.failures == []
    assert summary.identical == summary.trials == 3
    assert summary.kills >= 1 and summary.checks_after_kill == summary.kills
    assert summary.kills + summary.finished_before_kill >= 3  # every trial planned a kill
    assert sum(summary.kills_by_phase.values()) == summary.kills
    assert json.loads(json.dumps(trials.asdict(summary)))["identical"] == 3


def _save(root: Path, step: int) -> None:
    save_checkpoint(root, state=TrainState(step=step), trainable={"w": torch.ones(2) * step},
                    optimizer={}, config_yaml="", is_best=True, keep=5)  # fmt: skip


def test_checker_finds_partial_folders_and_dangling_pointers(trials, tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    assert trials.check_checkpoints(root) == ([], 0)
    (root / ".tmp-step-000003-1").mkdir()  # a kill while writing: allowed, counted
    assert trials.check_checkpoints(root) == ([], 1)
    (root / "step-000001" / "rng.pt").unlink()
    (root / "step-000002" / "trainable.safetensors").write_bytes(b"\x00" * 10)
    problems, _ = trials.check_checkpoints(root)
    assert any("step-000001: missing rng.pt" in p for p in problems)
    assert any("step-000002: unreadable" in p for p in problems)
    (root / "latest.json").write_text('{"last": "step-000009", "best": "step-000002"}')
    problems, _ = trials.check_checkpoints(root)
    assert any("names step-000009, which does not exist" in p for p in problems)
    (root / "latest.json").write_text('{"last": "step-0')
    assert "corrupt" in trials.check_checkpoints(root)[0][0]


def test_next_save_removes_what_killed_saves_left(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    (root / ".tmp-step-000002-99999999").mkdir()  # a step folder being written
    (root / ".tmp-latest.json-99999999").write_text("{")  # a pointer being replaced
    (root / ".tmp-trash-step-000000-99999999").mkdir()  # a pruned folder being deleted
    _save(root, 2)
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000001",
                                                      "step-000002"]  # fmt: skip


def test_resaving_a_step_replaces_it_whole(tmp_path):
    # a run killed after renaming step-2 but before pointing to it redoes step 2 on resume
    root = tmp_path / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    save_checkpoint(root, state=TrainState(step=2), trainable={"w": torch.zeros(2)},
                    optimizer={}, config_yaml="", is_best=False, keep=5)  # fmt: skip
    from safetensors.torch import load_file

    assert torch.equal(load_file(root / "step-000002" / "trainable.safetensors")["w"],
                       torch.zeros(2))  # fmt: skip
    assert not list(root.glob(".tmp-*"))
