"""The real CLI end to end on the tiny model: run folder, reload, results, errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.models.generation import load_any, reply
from tunelab.models.saved import load_trained
from tunelab.training.checkpoint import read_pointer

runner = CliRunner()


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_writes_a_complete_run_folder(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs")
    result = runner.invoke(app, ["run", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.output
    assert "base (zero-shot) vs fine-tuned" in result.output
    assert "retention score" in result.output  # the retention suite runs in every run
    run = tmp_path / "runs" / "tiny"
    for name in [
        "config.resolved.yaml",
        "forgetting.json",
        "metrics.jsonl",
        "results.json",
        "data/data_card.json",
        "data/train.jsonl",
        "model/tunelab_model.json",
        "model/adapter_model.safetensors",
    ]:
        assert (run / name).is_file(), name  # fmt: skip
    assert list((run / "tensorboard").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert results["training"]["steps"] == 8
    assert results["training"]["stopped"] == "completed"
    assert results["data"]["splits"]["train"] + results["data"]["splits"]["val"] + results[
        "data"]["splits"]["test"] == 60  # fmt: skip
    assert results["data"]["hash"] and results["tunelab_version"]
    for key in ("base", "tuned"):
        metrics = results[key]["metrics"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and "f1_macro" in metrics
        assert results[key]["n"] == results["data"]["splits"]["test"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [2, 4, 6, 8]
    assert [x["step"] for x in lines if "val_loss" in x] == [4, 8]
    pointer = read_pointer(run / "checkpoints")
    assert pointer["best"] in {"step-000004", "step-000008"}

    # the exported model reloads and scores exactly like the in-run evaluation
    result = runner.invoke(app, ["eval", str(_write(tmp_path, cfg)), "--model", str(run), "--json"])
    assert result.exit_code == 0, result.output
    reloaded = json.loads(result.output[result.output.index("{") :])
    assert reloaded["metrics"]["accuracy"] == pytest.approx(results["tuned"]["metrics"]["accuracy"])
    model, _tok, info = load_trained(run)
    assert info["kind"] == "lora" and info["labels"] == ["neg", "pos"]
    assert any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("method", [{"kind": "full"}, {"kind": "frozen", "head": "classifier"},
                                    {"kind": "lora", "head": "classifier"}])  # fmt: skip
def test_every_method_trains_and_reloads(tmp_path, tiny_model_dir, sentiment_file, method):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs", method=method,
                      train={"max_steps": 4, "eval_every": 2}, eval={"base": False})  # fmt: skip
    result = runner.invoke(app, ["run", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    results = json.loads((run / "results.json").read_text())
    model, _tok, info = load_trained(run)
    assert info["head"] == method.get("head", "lm")
    assert (model.classifier is not None) == (info["head"] == "classifier")
    if method["kind"] == "frozen":
        assert results["trainable_params"] == 32 * 2 + 2  # the head alone: (C x H) + C
    reloaded = runner.invoke(
        app, ["eval", str(_write(tmp_path, cfg)), "--model", str(run), "--json"]
    )
    out = json.loads(reloaded.output[reloaded.output.index("{") :])
    assert out["metrics"]["accuracy"] == pytest.approx(results["tuned"]["metrics"]["accuracy"])


def test_generate_with_a_trained_run(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      train={"max_steps": 2, "eval_every": 2}, eval={"base": False})  # fmt: skip
    assert runner.invoke(app, ["train", str(_write(tmp_path, cfg))]).exit_code == 0
    result = runner.invoke(app, ["generate", str(tmp_path / "runs" / "tiny"), "-p", "the film",
                                 "--max-new-tokens", "5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    # the CLI prints exactly what the library's greedy reply gives for the chat-templated prompt
    model, tok, _info = load_any(str(tmp_path / "runs" / "tiny"))
    expected = reply(model, tok, [{"role": "user", "content": "the film"}], max_new_tokens=5)
    assert result.output == expected + "\n"
    text = tok.apply_chat_template([{"role": "user", "content": "the film"}],
                                   add_generation_prompt=True, tokenize=False)  # fmt: skip
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.lm.generate(input_ids=ids, max_new_tokens=5, do_sample=False,
                            repetition_penalty=1.1, pad_token_id=tok.pad_token_id)  # fmt: skip
    assert expected == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_config_verbs(tmp_path):
    assert runner.invoke(app, ["config", "validate"]).exit_code == 0
    shown = runner.invoke(app, ["config", "show", "--set", "train.lr=0.001"])
    assert yaml.safe_load(shown.output)["train"]["lr"] == pytest.approx(0.001)
    schema = json.loads(runner.invoke(app, ["config", "schema"]).output)
    assert "train" in schema["properties"]
    assert runner.invoke(app, ["models"]).exit_code == 0
    listed = runner.invoke(app, ["datasets"])
    assert "rotten_tomatoes" in listed.output and "chatterbot_qa" in listed.output


def test_errors_are_one_message_without_traceback(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    # the real entry point, in a process of its own
    proc = subprocess.run([sys.executable, "-m", "tunelab", "config", "validate", str(bad)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "train.epoch: unknown key; did you mean 'epochs'?" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "(rank" not in proc.stderr
    # the same main() in this process: --debug lets the error through with its traceback
    from tunelab.cli import main as cli_main
    from tunelab.errors import ConfigError

    monkeypatch.setattr(sys, "argv", ["tunelab", "--debug", "config", "validate", str(bad)])
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        cli_main.main()
    # a process of a distributed launch names its rank (each rank reports its own failure)
    monkeypatch.setattr(sys, "argv", ["tunelab", "config", "validate", str(bad)])
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    assert exited.value.code == 1
    ranked = capsys.readouterr().err
    assert ranked.startswith("error (rank 1): ") and "train.epoch" in ranked


def test_data_error_names_file_line_and_field(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": ""}\n')
    cfg = tiny_config(tiny_model_dir, data, tmp_path / "runs")
    result = runner.invoke(app, ["prepare", str(_write(tmp_path, cfg))])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "d.jsonl:2" in message and "label" in message
    assert torch.get_num_threads() >= 1


def test_prepare_shows_the_card_and_strict_mode_stops(tmp_path, tiny_model_dir, sentiment_file):
    lines = [*sentiment_file.read_text().splitlines()[:40], '{"text": "bad one", "label": ""}']
    sentiment_file.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs")
    result = runner.invoke(app, ["prepare", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.exception
    assert "validation: empty label" in result.output and "data hash" in result.output
    rejected = (tmp_path / "runs/tiny/data/rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and '"line": 41' in rejected[0]
    assert (tmp_path / "runs/tiny/data/data_card.md").is_file()
    cfg["data"]["validation"] = "strict"
    result = runner.invoke(app, ["prepare", str(_write(tmp_path, cfg))])
    assert result.exit_code != 0
    assert f"{sentiment_file}:41: label: label is empty" in str(result.exception)


@pytest.mark.parametrize("verb", ["run", "train"])
def test_ctrl_c_says_what_is_safe_and_how_to_resume(tmp_path, monkeypatch, verb,
                                                   tiny_model_dir, sentiment_file):  # fmt: skip
    import tunelab.cli.run
    import tunelab.cli.train
    from tunelab.errors import TrainingError

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(getattr(tunelab.cli, verb), "run_pipeline", interrupted)
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, [verb, str(path)])
    assert isinstance(result.exception, TrainingError)
    assert "no checkpoint was saved yet" in str(result.exception)
    assert result.exception.hint == f"continue with `tunelab {verb} {path} --resume`"
    checkpoints = tmp_path / "runs" / cfg["name"] / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "latest.json").write_text(json.dumps({"last": "step-000040", "best": None}))
    again = runner.invoke(app, [verb, str(path)])
    assert "the last checkpoint (step-000040) is intact" in str(again.exception)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_write_error_outside_checkpoints_is_one_message(monkeypatch, capsys, code):
    # e.g. the disk fills while metrics.jsonl or results.json is written
    from tunelab.cli import main as cli_main

    def full(*_args, **_kwargs):
        raise OSError(code, os.strerror(code), "runs/x/metrics.jsonl")

    monkeypatch.setattr(cli_main, "app", full)
    with pytest.raises(SystemExit) as exit_:
        cli_main.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"cannot write runs/x/metrics.jsonl: {os.strerror(code)}" in err
    assert "--resume" in err and "Traceback" not in err


def test_other_os_errors_are_not_disguised(monkeypatch):
    from tunelab.cli import main as cli_main

    def missing(*_args, **_kwargs):
        raise OSError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(cli_main, "app", missing)
    with pytest.raises(OSError, match="Connection refused"):
        cli_main.main()
