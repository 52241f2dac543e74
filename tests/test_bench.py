"""Benchmarks run and report consistent numbers (no time is asserted: machines are noisy)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.bench.eval_speed import match_label
from tunelab.cli.main import app

runner = CliRunner()


def test_match_label():
    words = ["positive", "negative"]
    assert match_label("  Positive.", words) == 0
    assert match_label("negative", words) == 1
    assert match_label("I think it is positive", words) is None


def test_bench_eval_reports_both_paths(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "eval", str(path), "--n", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["examples"] == 6  # --n above the test split's size: the whole split (60 x 0.1)
    ls, gl = data["label_scoring"], data["generate_loop"]
    assert ls["seconds"] > 0 and gl["seconds"] > 0
    assert data["speedup"] == pytest.approx(gl["seconds"] / ls["seconds"], rel=0.05, abs=0.02)
    assert 0 <= gl["unparseable"] <= 6 and 0.0 <= data["agreement_all"] <= 1.0
    # label-scoring accuracy equals what `tunelab eval` reports for the base model
    ev = runner.invoke(app, ["eval", str(path), "--json"])
    metrics = json.loads(ev.output[ev.output.index("{") :])
    assert metrics["n"] == data["examples"]
    assert ls["accuracy"] == metrics["metrics"]["accuracy"]
