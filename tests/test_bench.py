"""Benchmarks run and report consistent numbers (no time is asserted: machines are noisy)."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.errors import ConfigError
from tunelab.recipes.bench.eval_speed import match_label

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


def test_generated_rows_are_reproducible_and_long_tailed():
    from tunelab.recipes.bench.synthetic import instruction_rows, length_summary

    rows = instruction_rows(400, seed=3)
    assert rows == instruction_rows(400, seed=3)
    assert rows != instruction_rows(400, seed=4)
    assert {r["task"] for r in rows} == {"qa", "label", "write"}
    assert all(r["instruction"] and r["output"] for r in rows)
    chars = length_summary([len(r["instruction"] + r["input"] + r["output"]) for r in rows])
    assert chars["p90"] > 2.5 * chars["p50"]  # a long tail, not one length
    labelled = next(r for r in rows if r["task"] == "label")
    assert labelled["output"].count("\n") == labelled["input"].count("\n")  # one line each


def test_train_flops_counts_what_the_docstring_says():
    from types import SimpleNamespace

    from tunelab.recipes.bench.train_speed import train_flops

    cfg = SimpleNamespace(hidden_size=4, num_hidden_layers=2, vocab_size=10)
    # one row of 3 tokens, 1 response token, 100 block parameters
    forward = 2 * 100 * 3 + 4 * 2 * 4 * 3 * 2 / 2 + 2 * 4 * 10 * 1
    assert train_flops(cfg, [3], [1], "lora", 100) == 2 * forward
    assert train_flops(cfg, [3], [1], "full", 100) == 3 * forward


def test_bench_train_runs_tunelab_and_the_trainer_peer_on_the_same_rows(tmp_path, tiny_model_dir):
    from tunelab.recipes.bench.train_speed import TrainBenchSpec, bench_train

    spec = TrainBenchSpec(
        data=str(tmp_path / "rows.jsonl"), out_dir=str(tmp_path / "bench"),
        model=str(tiny_model_dir), examples=12, val_examples=4, batch_size=4, max_length=96,
        max_batch_tokens=128, threads=1,
    )  # fmt: skip
    result = bench_train(spec, ["tunelab", "hf"], log=lambda _msg: None)
    ours, peer = result["engines"]["tunelab"], result["engines"]["hf"]
    assert ours["real_tokens"] == peer["real_tokens"] > 0  # the same rows, one epoch each
    assert ours["padding_fraction"] < peer["padding_fraction"]  # length grouping works
    for r in (ours, peer):
        assert r["tokens_per_second"] > 0 and r["peak_rss_mb"] > 0 and 0 < r["mfu"] < 1
        assert math.isfinite(r["heldout_loss"])
    vs = result["versus_best_peer"]
    assert vs["peer"] == "hf"
    assert vs["speedup"] == pytest.approx(
        ours["tokens_per_second"] / peer["tokens_per_second"], rel=0.01
    )
    saved = json.loads((tmp_path / "bench" / "bench_train_lora.json").read_text())
    assert saved["versus_best_peer"] == vs
    assert saved["matmul_peak_gflops"]["fp32"] > 0


def test_bench_train_cli_rejects_unknown_method_and_peer(tmp_path):
    bad_method = runner.invoke(app, ["bench", "train", "--method", "qlora", "--out", str(tmp_path)])
    assert isinstance(bad_method.exception, ConfigError)
    assert bad_method.exception.hint == "use lora or full"
    bad_peer = runner.invoke(app, ["bench", "train", "--peers", "trl", "--out", str(tmp_path)])
    assert isinstance(bad_peer.exception, ConfigError)
    assert "unknown peer(s): trl" in str(bad_peer.exception)
    assert not list(tmp_path.iterdir())  # nothing was started
