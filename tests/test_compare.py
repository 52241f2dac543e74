"""Few-shot prompts, the compare verdict, and the compare stage on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.data.types import Example
from tunelab.evaluation.compare import conclusion, primary_metric, subset, with_demonstrations
from tunelab.evaluation.evaluate import Predictions

runner = CliRunner()


def _ex(text: str, response: str, *, system: bool = True, raw: bool = False) -> Example:
    messages = ({"role": "user", "content": text},)
    if system and not raw:
        messages = ({"role": "system", "content": "be brief"}, *messages)
    return Example(messages, response, None, "t", raw=raw)


def test_demonstrations_become_turns_after_the_system_prompt():
    query = _ex("q?", "a")
    demos = [_ex("d1?", "r1"), _ex("d2?", "r2")]
    out = with_demonstrations(query, demos)
    assert [m["role"] for m in out.messages] == [
        "system", "user", "assistant", "user", "assistant", "user"
    ]  # fmt: skip
    assert [m["content"] for m in out.messages[1:]] == ["d1?", "r1", "d2?", "r2", "q?"]
    assert out.response == "a" and query.messages[-1] == out.messages[-1]


def test_raw_completion_demonstrations_are_text_blocks():
    out = with_demonstrations(_ex("2+2=", "4", raw=True), [_ex("1+1=", "2", raw=True)])
    assert out.messages == ({"role": "user", "content": "1+1=2\n\n2+2="},)


def _row(name, model, acc, ci, tokens, ms=None, shots=0):
    return {"name": name, "model": model, "shots": shots, "metrics": {"accuracy": acc},
            "ci95": {"accuracy": ci}, "prompt_tokens": tokens, "latency_ms": ms}  # fmt: skip


def test_conclusion_names_the_best_base_row_points_and_cost():
    rows = [
        _row("base 0-shot", "base", 0.55, [0.50, 0.60], 80, 300),
        _row("base 4-shot", "base", 0.62, [0.57, 0.67], 400, 900, shots=4),
        _row("fine-tuned", "tuned", 0.86, [0.82, 0.89], 80, 300),
    ]
    text = conclusion(rows, "accuracy")
    assert text.startswith("fine-tuned beats base 4-shot by 24.0 points of accuracy")
    assert "do not overlap" in text
    assert "5.0x fewer prompt tokens" in text and "3.0x faster" in text


def test_conclusion_when_prompting_wins_or_ties():
    rows = [_row("base 4-shot", "base", 0.70, [0.6, 0.8], 400), _row("fine-tuned", "tuned", 0.65,
            [0.55, 0.75], 100)]  # fmt: skip
    text = conclusion(rows, "accuracy")
    assert text.startswith("base 4-shot beats fine-tuned by 5.0 points")
    assert "intervals overlap" in text
    rows[1]["metrics"]["accuracy"] = 0.7
    assert conclusion(rows, "accuracy").startswith("fine-tuned ties with base 4-shot")


def test_conclusion_on_a_0_to_100_metric_and_without_a_tuned_row():
    rows = [_row("base 0-shot", "base", 0, None, 50), _row("fine-tuned", "tuned", 0, None, 50)]
    for r, bleu in zip(rows, (10.0, 31.5), strict=True):
        r["metrics"] = {"bleu": bleu}
        r["ci95"] = {}
    assert "by 21.5 points of bleu, with about the same prompt tokens" in conclusion(rows, "bleu")
    assert conclusion(rows[:1], "bleu") == "no fine-tuned model to compare"


def test_primary_metric_prefers_accuracy_then_rouge_l():
    assert primary_metric([{"metrics": {"f1_macro": 1, "accuracy": 1}}], True) == "accuracy"
    assert primary_metric([{"metrics": {"bleu": 1, "rougeL": 1}}], False) == "rougeL"
    assert primary_metric([{"metrics": {"perplexity": 3.0}}], False) == "perplexity"


def test_subset_keeps_rows_aligned():
    import torch

    p = Predictions(["a", "b", "c"], ["a", "x", "c"], torch.eye(3), [5, 6, 7], 3.0, [1.0, 2.0, 3.0],
                    [1, 1, 1])  # fmt: skip
    s = subset(p, [2, 0])
    assert s.predictions == ["c", "a"] and s.references == ["c", "a"]
    assert s.prompt_tokens == [7, 5] and s.nll == [3.0, 1.0] and s.seconds == pytest.approx(2.0)
    assert s.scores is not None and s.scores[0].tolist() == [0.0, 0.0, 1.0]


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_compares_zero_shot_few_shot_and_fine_tuned(tmp_path, tiny_model_dir, sentiment_file):
    compare = {"shots": [2], "selection": "similar", "latency_requests": 2}
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      forgetting={"suite": "none"}, compare=compare)  # fmt: skip
    path = _write(tmp_path, cfg)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "compare on" in result.output and "fine-tuned" in result.output
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    table = results["compare"]
    assert [r["name"] for r in table["rows"]] == ["base 0-shot", "base 2-shot", "fine-tuned"]
    zero, two, tuned = table["rows"]
    assert zero["n"] == two["n"] == tuned["n"] == results["data"]["splits"]["test"]
    # a 2-shot prompt carries two solved examples: about three times the tokens
    assert 2.2 * zero["prompt_tokens"] < two["prompt_tokens"] < 3.8 * zero["prompt_tokens"]
    assert tuned["prompt_tokens"] == zero["prompt_tokens"]
    # the zero-shot row reuses the base eval: the same accuracy on the same examples
    assert zero["metrics"]["accuracy"] == results["base"]["metrics"]["accuracy"]
    assert tuned["metrics"]["accuracy"] == results["tuned"]["metrics"]["accuracy"]
    for row in table["rows"]:
        lo, hi = row["ci95"]["accuracy"]
        assert lo <= row["metrics"]["accuracy"] <= hi
        assert row["latency_ms"] > 0 and row["ms_per_example"] > 0
    assert table["primary"] == "accuracy" and "accuracy" in table["conclusion"]

    # the verb alone rebuilds the same table from the saved model and merges it
    again = runner.invoke(app, ["compare", str(path)])
    assert again.exit_code == 0, again.output
    saved = json.loads((tmp_path / "runs" / "tiny" / "compare.json").read_text())
    assert [r["metrics"]["accuracy"] for r in saved["rows"]] == [
        r["metrics"]["accuracy"] for r in table["rows"]
    ]
    merged = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert merged["compare"]["rows"][1]["prompt_tokens"] == two["prompt_tokens"]


def test_compare_without_a_fine_tuned_model_has_only_base_rows(
    tmp_path, tiny_model_dir, sentiment_file
):
    compare = {"shots": [1, 3], "max_examples": 4, "latency_requests": 0}
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs", compare=compare)
    result = runner.invoke(app, ["compare", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "runs" / "tiny" / "compare.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["base 0-shot", "base 1-shot", "base 3-shot"]
    assert all(r["n"] == 4 and r["latency_ms"] is None for r in table["rows"])
    assert table["conclusion"] == "no fine-tuned model to compare"


def test_a_k_larger_than_the_train_split_is_skipped_with_the_reason(
    tmp_path, tiny_model_dir, sentiment_file
):
    compare = {"shots": [1, 60], "max_examples": 3, "latency_requests": 0}
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs", compare=compare)
    result = runner.invoke(app, ["compare", str(_write(tmp_path, cfg))], terminal_width=200)
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "runs" / "tiny" / "compare.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["base 0-shot", "base 1-shot"]
    assert len(table["skipped"]) == 1 and table["skipped"][0].startswith("60-shot: compare.shots")
    assert "skipped 60-shot" in result.output
