"""Calibration, generation metrics during training and tracking, wired into `run`."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.models.nll import example_nll, mean_loss
from tunelab.recipes.run import run_pipeline
from tunelab.report.tracking import final_scalars, open_mlflow
from tunelab.results import Results

runner = CliRunner()


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture()
def calibrated_run(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      forgetting={"suite": "none"}, compare={"enabled": False},
                      eval={"val_examples": 4})  # fmt: skip
    path = _write(tmp_path, cfg)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    return path, tmp_path / "runs" / "tiny", result.output


def test_run_calibrates_and_saves_the_temperature_with_the_model(calibrated_run):
    _path, run, output = calibrated_run
    assert "calibration: temperature" in output
    results = json.loads((run / "results.json").read_text())
    cal = results["calibration"]
    saved = json.loads((run / "model" / "calibration.json").read_text())
    assert saved["temperature"] == cal["temperature"] == results["tuned"]["temperature"]
    assert 0.05 <= cal["temperature"] <= 20
    assert cal["n_test"] == results["tuned"]["n"]
    assert cal["n_fit"] == results["data"]["splits"]["val"]
    # temperature scaling changes confidences, never the predictions
    assert cal["before"]["accuracy"] == cal["after"]["accuracy"] == results["tuned"]["metrics"][
        "accuracy"]  # fmt: skip
    # the fitted temperature minimises val NLL; on test it should not make NLL much worse
    assert cal["after"]["nll"] <= cal["before"]["nll"] + 0.05
    assert len(cal["reliability"]["after"]) == cal["bins"] == 15
    assert sum(b["count"] for b in cal["reliability"]["before"]) == cal["n_test"]
    for sample in results["tuned"]["samples"]:  # confidences are the calibrated ones
        assert 0.5 <= sample["confidence"] <= 1.0


def test_eval_and_calibrate_verbs_use_the_saved_temperature(calibrated_run):
    path, run, _ = calibrated_run
    temperature = json.loads((run / "model" / "calibration.json").read_text())["temperature"]
    out = runner.invoke(app, ["eval", str(path), "--model", str(run), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["temperature"] == temperature
    table = runner.invoke(app, ["eval", str(path), "--model", str(run)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "95% interval" in table.output and f"temperature {temperature:.3f}" in table.output

    (run / "model" / "calibration.json").unlink()
    again = runner.invoke(app, ["calibrate", str(path)])
    assert again.exit_code == 0, again.output
    refit = json.loads((run / "model" / "calibration.json").read_text())["temperature"]
    assert refit == pytest.approx(temperature, rel=1e-6)  # same data, same model, same fit
    assert (run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "calibration.json").read_text())["temperature"] == refit


def test_generation_metrics_are_logged_at_validations(calibrated_run):
    _path, run, _ = calibrated_run
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val_loss" in x]
    assert [x["step"] for x in val] == [4, 8]
    for x in val:
        assert 0.0 <= x["val_accuracy"] <= 1.0 and "val_f1_macro" in x
    samples = [json.loads(x) for x in (run / "val_samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [4, 8]
    assert all(s["prediction"] in ("pos", "neg") for s in samples)


def test_tensorboard_holds_the_training_curves_and_the_final_summary(calibrated_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _path, run, _ = calibrated_run
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "val_loss", "val_accuracy", "lr"} <= tags
    assert {"test/tuned/accuracy", "test/base/accuracy", "calibration/after/ece"} <= tags
    results = json.loads((run / "results.json").read_text())
    final = acc.Scalars("test/tuned/accuracy")[-1]
    assert final.value == pytest.approx(results["tuned"]["metrics"]["accuracy"])


def test_generation_tasks_are_not_calibrated(tmp_path, tiny_model_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q {i}", "answer": "fun"}) + "\n"
                            for i in range(30)))  # fmt: skip
    cfg = tiny_config(tiny_model_dir, data, tmp_path / "runs",
                      data={"template": None, "label_words": {}}, forgetting={"suite": "none"},
                      compare={"enabled": False}, calibration={"enabled": "on"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"calibration\.enabled"):
        run_pipeline(load_config(_write(tmp_path, cfg), []))


def test_val_every_must_fall_on_validations(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs", eval={"val_every": 6})
    with pytest.raises(ConfigError, match=r"eval\.val_every"):
        load_config(_write(tmp_path, cfg), [])


def test_example_nll_sums_to_the_mean_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.data.tokenize import Encoded
    from tunelab.models.task_model import TaskModel

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model = TaskModel(lm, "lm")
    items = [Encoded([3, 10, 11, 12, 20, 21], 4), Encoded([3, 13, 22, 23], 2),
             Encoded([3, 14, 15, 16, 17, 30, 31, 2], 5)]  # fmt: skip
    nll, tokens = example_nll(model, items, 0, batch_size=2, precision="fp32")
    assert tokens == [2, 2, 3]
    assert sum(nll) / sum(tokens) == pytest.approx(mean_loss(model, items, 0, 2, "fp32"), rel=1e-5)
    alone = [example_nll(model, [e], 0, 1, "fp32")[0][0] for e in items]
    assert nll == pytest.approx(alone, rel=1e-5)  # padding in a batch changes nothing


def test_final_scalars_flatten_results():
    per_class = {"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}}
    results = Results.model_validate({
        "base": {"n": 2, "metrics": {"accuracy": 0.5, "per_class": per_class}},
        "tuned": {"n": 2, "metrics": {"accuracy": 0.8}},
        "compare": {"primary": "accuracy", "rows": [
            {"name": "base 4-shot", "model": "base", "shots": 4, "n": 2,
             "metrics": {"accuracy": 0.6}, "prompt_tokens": 300.0}]},
        "calibration": {"temperature": 1.5, "bins": 15, "n_fit": 2, "n_test": 2,
                        "before": _calib(0.2), "after": _calib(0.05)},
        "forgetting": {"retention_score": 0.9, "retention_ci95": [0.8, 1.0],
                       "n_probes_in_score": 1,
                       "probes": {"qa": {"metric": "match_f1", "higher_is_better": True,
                                         "base": 1, "tuned": 2, "delta": 1.0,
                                         "ci95": [0.5, 1.5], "significant": True,
                                         "retention": 0.5, "retention_ci95": [0.4, 0.6]}}},
        "training": {"steps": 8, "stopped": "completed"},
    })  # fmt: skip
    calib = {f"calibration/{side}/{k}": v for side, ece in (("before", 0.2), ("after", 0.05))
             for k, v in _calib(ece).items()}  # fmt: skip
    assert final_scalars(results) == {
        "test/base/accuracy": 0.5, "test/tuned/accuracy": 0.8,
        "compare/base 4-shot/accuracy": 0.6, "compare/base 4-shot/prompt_tokens": 300.0,
        "calibration/temperature": 1.5, "calibration/before/ece": 0.2,
        "calibration/after/ece": 0.05, "forgetting/retention_score": 0.9,
        "forgetting/qa/base": 1.0, "forgetting/qa/tuned": 2.0, "forgetting/qa/retention": 0.5,
        "training/steps": 8.0,
    } | calib  # fmt: skip


def _calib(ece: float) -> dict[str, float]:
    return {"ece": ece, "brier": 0.1, "nll": 0.3, "accuracy": 0.8, "mean_confidence": 0.7}


class _FakeMlflow(types.ModuleType):
    """Records the calls tunelab makes; MLflow itself is an optional extra."""

    def __init__(self) -> None:
        super().__init__("mlflow")
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: self.calls.append((name, a, k))


def test_mlflow_receives_params_curves_summary_and_artifacts(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch
):
    fake = _FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      forgetting={"suite": "none"}, compare={"enabled": False},
                      tracking={"mlflow": True})  # fmt: skip
    run_pipeline(load_config(_write(tmp_path, cfg), []))
    names = [c[0] for c in fake.calls]
    assert names[:3] == ["set_tracking_uri", "set_experiment", "start_run"]
    assert names[-1] == "end_run"
    params = next(c[1][0] for c in fake.calls if c[0] == "log_params")
    assert params["train.lr"] == "0.005" and params["name"] == "tiny"
    metrics = [c[1][0] for c in fake.calls if c[0] == "log_metrics"]
    assert any("loss" in m for m in metrics) and any("val_loss" in m for m in metrics)
    assert any("test/tuned/accuracy" in m for m in metrics)
    artifacts = {Path(c[1][0]).name for c in fake.calls if c[0] == "log_artifact"}
    assert {"results.json", "report.html", "config.resolved.yaml"} <= artifacts


def test_mlflow_missing_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"tunelab\[mlflow\]"):
        open_mlflow("file:/tmp/x", "e", "r")
