"""Crash safety: a killed run resumes to the same weights; a NaN loss stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.config import parse_config
from tunelab.errors import CheckpointError, TrainingError
from tunelab.training import loop as loop_module
from tunelab.training.checkpoint import TrainState, load_checkpoint, read_pointer, save_checkpoint
from tunelab.workflow import Stages, run_pipeline

runner = CliRunner()
LONG = {"max_steps": 120, "eval_every": 5, "log_every": 5, "keep_checkpoints": 2}


def _cfg(tmp_path, tiny_model_dir, sentiment_file, out: str, **train) -> dict:
    return tiny_config(tiny_model_dir, sentiment_file, tmp_path / out,
                       method={"lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
                       train={**LONG, **train}, eval={"base": False})  # fmt: skip


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    pointer = read_pointer(run / "checkpoints")
    return load_file(run / "checkpoints" / str(pointer["last"]) / "trainable.safetensors")


def test_killed_run_resumes_to_identical_weights(tmp_path, tiny_model_dir, sentiment_file):
    # reference: one uninterrupted run
    ref_cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "ref"))
    run_pipeline(ref_cfg, stages=Stages(base_eval=False, tuned_eval=False))

    # the same run in a subprocess, killed with SIGKILL once a checkpoint past step 10 exists
    cfg = _cfg(tmp_path, tiny_model_dir, sentiment_file, "killed")
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "killed" / "tiny"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        last = (
            read_pointer(run / "checkpoints").get("last")
            if (run / "checkpoints").exists()
            else None
        )
        if last and int(last.split("-")[1]) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = int(str(read_pointer(run / "checkpoints")["last"]).split("-")[1])
    assert killed_at < 120

    result = runner.invoke(app, ["train", str(path), "--resume"])
    assert result.exit_code == 0, result.output
    ref, resumed = _final_weights(tmp_path / "ref" / "tiny"), _final_weights(run)
    assert ref.keys() == resumed.keys()
    for name in ref:
        assert torch.equal(ref[name], resumed[name]), name
    # metrics.jsonl has each step once, even though steps after the checkpoint ran twice
    steps = [yaml.safe_load(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]  # fmt: skip
    assert steps == sorted(set(steps)) and steps[-1] == 120


def test_resume_of_a_finished_run_is_refused(tmp_path, tiny_model_dir, sentiment_file):
    cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "done", max_steps=5))
    run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False))
    with pytest.raises(TrainingError, match="already finished"):
        run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False), resume=True)


def test_nan_loss_stops_with_step_and_keeps_best_checkpoint(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch
):
    real = loop_module.batch_loss
    calls = {"n": 0}

    def poisoned(model, batch):
        loss, n = real(model, batch)
        calls["n"] += 1
        return (loss * float("nan"), n) if calls["n"] == 7 else (loss, n)

    monkeypatch.setattr(loop_module, "batch_loss", poisoned)
    cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "nan", max_steps=10,
                            eval_every=2))  # fmt: skip
    with pytest.raises(TrainingError, match="loss became nan at step 7") as err:
        run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False))
    checkpoints = tmp_path / "nan" / "tiny" / "checkpoints"
    pointer = read_pointer(checkpoints)
    assert pointer["last"] == "step-000006"
    assert str(pointer["best"]) in str(err.value)
    state, trainable, _ = load_checkpoint(checkpoints / str(pointer["best"]))
    assert state.step <= 6 and all(torch.isfinite(t).all() for t in trainable.values())


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    root = tmp_path / "ckpt"
    good = {"w": torch.ones(3)}
    save_checkpoint(root, state=TrainState(step=1), trainable=good, optimizer={},
                    config_yaml="", is_best=True, keep=1)  # fmt: skip
    bad = {"w": torch.ones(3), "x": "not a tensor"}  # makes safetensors fail mid-save
    with pytest.raises((CheckpointError, Exception)):
        save_checkpoint(root, state=TrainState(step=2), trainable=bad, optimizer={},  # type: ignore[arg-type]
                        config_yaml="", is_best=False, keep=1)  # fmt: skip
    assert read_pointer(root) == {"last": "step-000001", "best": "step-000001"}
    assert not list(root.glob(".tmp-*"))
    state, trainable, _ = load_checkpoint(root / "step-000001")
    assert state.step == 1 and torch.equal(trainable["w"], good["w"])


def test_unwritable_checkpoint_folder_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")  # a file where a folder must go fails even for root
        root = blocker / "ckpt"
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(root, state=TrainState(step=1), trainable={"w": torch.ones(2)},
                        optimizer={}, config_yaml="", is_best=True, keep=1)  # fmt: skip


def test_loading_best_weights_leaves_the_rng_alone(tmp_path):
    from tunelab.training.checkpoint import load_weights

    root = tmp_path / "ckpt"
    torch.manual_seed(1)
    save_checkpoint(root, state=TrainState(step=1), trainable={"w": torch.arange(3.0)},
                    optimizer={}, config_yaml="", is_best=True, keep=1)  # fmt: skip
    torch.manual_seed(2)
    expected = torch.rand(4)
    torch.manual_seed(2)
    assert torch.equal(load_weights(root / "step-000001")["w"], torch.arange(3.0))
    assert torch.equal(torch.rand(4), expected)  # the seed-2 stream goes on untouched
    load_checkpoint(root / "step-000001")  # resuming does restore the saved RNG (seed 1)
    assert not torch.equal(torch.rand(4), expected)
    with pytest.raises(CheckpointError, match="incomplete"):
        load_weights(tmp_path / "nowhere")
