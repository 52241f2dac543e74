"""Crash safety: a killed run resumes to the same weights; a NaN loss or gradient stops
cleanly or, with ``train.nonfinite: skip``, is skipped and counted."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import tunelab
from conftest import kill_after_checkpoint, tiny_config
from tunelab.cli.main import app
from tunelab.config import parse_config
from tunelab.errors import CheckpointError, TrainingError
from tunelab.recipes.run import Stages, run_pipeline
from tunelab.training.checkpoint import (
    TrainState,
    load_checkpoint,
    load_weights,
    read_pointer,
    rng_state,
    save_checkpoint,
)
from tunelab.training.objectives import LM

pytestmark = pytest.mark.faults

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
    # the child imports this tunelab (not another checkout's) and the tests' conftest
    paths = [str(Path(__file__).parent), str(Path(tunelab.__file__).parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kill_after_checkpoint(proc, run, 10, lambda: proc.send_signal(signal.SIGKILL))
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


def test_resume_after_the_last_checkpoint_writes_the_model(
    tmp_path, tiny_model_dir, sentiment_file
):
    # a kill between the final checkpoint and the model export: resume finishes the run
    cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "late", max_steps=5))
    first = run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False))
    run = tmp_path / "late" / "tiny"
    saved = load_file(run / "model" / "adapter_model.safetensors")
    shutil.rmtree(run / "model")
    again = run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False), resume=True)
    assert again.training is not None and first.training is not None
    assert again.training.steps == first.training.steps == 5
    assert again.training.best_step == first.training.best_step
    for name, value in load_file(run / "model" / "adapter_model.safetensors").items():
        assert torch.equal(value, saved[name]), name
    with pytest.raises(TrainingError, match="already finished"):
        run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False), resume=True)


def _poison(monkeypatch, at_call: int, where: str) -> None:
    """Make the ``at_call``-th training forward give a NaN loss (``loss``) or a finite loss
    whose gradients are NaN (``grad``)."""
    real = LM.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        loss, n, logs = real(self, model, batch)
        if torch.is_grad_enabled():  # training forwards only, not validation
            calls["n"] += 1
            if calls["n"] == at_call and where == "loss":
                loss = loss * float("nan")
            elif calls["n"] == at_call:
                loss.register_hook(lambda g: g * float("nan"))
        return loss, n, logs

    monkeypatch.setattr(LM, "loss", poisoned)  # what the loop's forward computes


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nan_stops_with_step_and_keeps_best_checkpoint(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch, where
):
    _poison(monkeypatch, 7, where)  # one micro-batch per step: step 7
    cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "nan", max_steps=10,
                            eval_every=2))  # fmt: skip
    what = "loss" if where == "loss" else "gradient norm"
    with pytest.raises(TrainingError, match=f"{what} became non-finite .* at step 7") as err:
        run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False))
    checkpoints = tmp_path / "nan" / "tiny" / "checkpoints"
    pointer = read_pointer(checkpoints)
    assert pointer["last"] == "step-000006"
    assert str(pointer["best"]) in str(err.value)
    state, trainable, _ = load_checkpoint(checkpoints / str(pointer["best"]))
    assert state.step <= 6 and all(torch.isfinite(t).all() for t in trainable.values())


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_skip_policy_skips_and_counts_the_batch(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch, where
):
    _poison(monkeypatch, 3, where)
    cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "skip", max_steps=6,
                            eval_every=2, nonfinite="skip", log_every=1))  # fmt: skip
    results = run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False))
    assert results.training is not None
    assert results.training.steps == 6 and results.training.skipped_steps == 1
    run = tmp_path / "skip" / "tiny"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "skipped" in x] == [3]
    assert all(math.isfinite(x["val_loss"]) for x in lines if "val_loss" in x)
    weights = load_weights(run / "checkpoints" / "step-000006")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    root = tmp_path / "ckpt"
    good = {"w": torch.ones(3)}
    save_checkpoint(root, state=TrainState(step=1), trainable=good, optimizer={},
                    config_yaml="", is_best=True, keep=1)  # fmt: skip
    bad = {"w": torch.ones(3), "x": "not a tensor"}  # fails before anything is written
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


def test_a_checkpoint_resumes_only_with_the_parallel_mode_that_saved_it(tmp_path):
    root = tmp_path / "ckpt"
    save_checkpoint(root, state=TrainState(step=1, world=2, sharded=True),
                    trainable={"w": torch.ones(2)}, optimizer={}, config_yaml="",
                    is_best=True, keep=1, rng=[rng_state(), rng_state()])  # fmt: skip
    with pytest.raises(CheckpointError, match=r"(?s)train.parallel: fsdp run.*uses ddp"):
        load_checkpoint(root / "step-000001", rank=1, world=2, sharded=False)
    state, _, _ = load_checkpoint(root / "step-000001", rank=1, world=2, sharded=True)
    assert state.sharded and state.step == 1


# ---- a full disk and an unwritable folder, at the OS level ----------------------------------

_fork = multiprocessing.get_context("fork")


def _with_file_limit(limit: int, work: Any, conn: Any) -> None:
    """In a forked child: cap the size of any file this process writes (RLIMIT_FSIZE, what a
    full disk or a quota looks like to a write: EFBIG instead of ENOSPC), run ``work``, send
    back the error it raised as ``(type, message, hint)``."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        work()
        conn.send(None)
    except BaseException as err:
        conn.send((type(err).__name__, str(err), getattr(err, "hint", None)))


def _in_child(target: Any, *args: Any) -> Any:
    here, there = _fork.Pipe()
    proc = _fork.Process(target=target, args=(*args, there))
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0, f"child exited with {proc.exitcode}"
    return here.recv()


@pytest.mark.parametrize("failing", ["trainable.safetensors", "optimizer.pt"])
def test_a_full_disk_during_a_save_is_a_clear_error(tmp_path, failing):
    root = tmp_path / "ckpt"
    small, big = {"w": torch.ones(4)}, {"w": torch.ones(50_000)}  # 200 kB: past 64 kB below
    save_checkpoint(root, state=TrainState(step=1), trainable=small, optimizer=small,
                    config_yaml="", is_best=True, keep=1)  # fmt: skip
    trainable, optimizer = (big, {}) if failing == "trainable.safetensors" else (small, big)

    def save() -> None:
        save_checkpoint(root, state=TrainState(step=2), trainable=trainable,
                        optimizer=optimizer, config_yaml="", is_best=True, keep=1)  # fmt: skip

    kind, message, hint = _in_child(_with_file_limit, 64_000, save)
    assert kind == "CheckpointError"
    assert f"cannot write checkpoint {root / 'step-000002'}: File too large" in message
    assert "free on that disk" in message and "--resume" in hint and "intact" in hint
    assert read_pointer(root) == {"last": "step-000001", "best": "step-000001"}
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000001"]
    state, weights, _ = load_checkpoint(root / "step-000001")
    assert state.step == 1 and torch.equal(weights["w"], torch.ones(4))


def _train_until(cfg: dict, fault: Any, conn: Any = None) -> Any:
    """Run ``cfg``; ``fault()`` runs once, after step 5 (the step-4 checkpoint is saved)."""

    def progress(event: dict) -> None:
        if event.get("step") == 5 and "loss" in event and not done:
            done.append(fault())

    done: list = []
    try:
        run_pipeline(parse_config(cfg), stages=Stages(base_eval=False, tuned_eval=False),
                     progress=progress)  # fmt: skip
        result = None
    except BaseException as err:
        result = (type(err).__name__, str(err), getattr(err, "hint", None))
    if conn is None:
        return result
    conn.send(result)


def _file_limit_at_step_5(cfg: dict, conn: Any) -> None:
    def fill_the_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, hard))  # < a checkpoint's 20 kB

    _train_until(cfg, fill_the_disk, conn)


def _assert_resumes_to_the_reference(tmp_path, cfg: dict, ref: dict) -> None:
    checkpoints = Path(cfg["output_dir"]) / "tiny" / "checkpoints"
    assert read_pointer(checkpoints)["last"] == "step-000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.json", "step-000002",
                                                             "step-000004"]  # fmt: skip
    run_pipeline(parse_config(cfg), stages=Stages(base_eval=False, tuned_eval=False),
                 resume=True)  # fmt: skip
    run_pipeline(parse_config(ref), stages=Stages(base_eval=False, tuned_eval=False))
    got, want = _final_weights(checkpoints.parent), _final_weights(Path(ref["output_dir"]) / "tiny")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def _small(tmp_path, tiny_model_dir, sentiment_file, out: str) -> dict:
    return _cfg(tmp_path, tiny_model_dir, sentiment_file, out, max_steps=8, eval_every=2,
                log_every=2) | {"tracking": {"tensorboard": False}}  # fmt: skip


def test_a_run_whose_disk_fills_stops_clearly_and_resumes(tmp_path, tiny_model_dir,
                                                          sentiment_file):  # fmt: skip
    cfg = _small(tmp_path, tiny_model_dir, sentiment_file, "full")
    kind, message, hint = _in_child(_file_limit_at_step_5, cfg)
    folder = tmp_path / "full" / "tiny" / "checkpoints" / "step-000006"
    assert (kind, message.split(" (")[0]) == (
        "CheckpointError",
        f"cannot write checkpoint {folder}: File too large",
    )
    assert "previous checkpoint is intact" in hint
    _assert_resumes_to_the_reference(tmp_path, cfg, _small(tmp_path, tiny_model_dir,
                                                           sentiment_file, "ref"))  # fmt: skip


def _read_only(folder: Path, scratch: Path) -> tuple[Any, Any]:
    """``(lock, unlock)`` of ``folder``: mode 0o500, or for root (whom modes do not stop) the
    immutable attribute (``chattr +i``); skips the test where neither can bite."""
    if os.geteuid() != 0:
        return (lambda: folder.chmod(0o500)), (lambda: folder.chmod(0o700))
    probe = scratch / "probe"
    probe.mkdir()
    tool = shutil.which("chattr")
    if tool is None or subprocess.run([tool, "+i", str(probe)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: nothing makes a folder read-only")
    subprocess.run([tool, "-i", str(probe)], check=True)

    def chattr(flag: str) -> None:
        subprocess.run([str(tool), flag, str(folder)], check=True, capture_output=True)

    return (lambda: chattr("+i")), (lambda: chattr("-i"))


def test_a_run_whose_folder_turns_read_only_stops_clearly_and_resumes(
    tmp_path, tiny_model_dir, sentiment_file
):
    cfg = _small(tmp_path, tiny_model_dir, sentiment_file, "ro")
    checkpoints = tmp_path / "ro" / "tiny" / "checkpoints"
    lock, unlock = _read_only(checkpoints, tmp_path)
    try:
        kind, message, hint = _train_until(cfg, lock)
    finally:
        unlock()
    assert kind == "CheckpointError"
    assert "Permission denied" in message or "Operation not permitted" in message
    assert str(checkpoints / "step-000006") in message and "fix permissions" in hint
    _assert_resumes_to_the_reference(tmp_path, cfg, _small(tmp_path, tiny_model_dir,
                                                           sentiment_file, "ref"))  # fmt: skip
