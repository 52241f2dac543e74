"""results.json: the typed model, its published JSON schema, a real run's file against it,
and a file in the layout tunelab wrote before typed results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema_rs  # a dependency of schemathesis (dev extra)
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.recipes.run import Stages, run_pipeline
from tunelab.results import Evaluation, Mitigations, Results, read_results, write_results
from tunelab.results.schema import render_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "docs" / "results.schema.json"
# written by tunelab 0.1.0 before typed results (the classification run of a tiny model with
# compare, calibration, the retention suite and EWC), model paths replaced by "tiny-model"
UNTYPED = Path(__file__).parent / "data" / "results-untyped.json"
runner = CliRunner()


def _validator() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))


def test_published_schema_is_current():
    """docs/results.schema.json is generated from Results; regenerate with the command it names."""
    assert SCHEMA.read_text() == render_schema(), (
        "docs/results.schema.json is stale: run "
        "`python -m tunelab.results.schema > docs/results.schema.json`"
    )


def test_a_real_runs_results_validate_against_the_schema(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      compare={"shots": [2], "latency_requests": 1},
                      forgetting={"max_examples": 4, "mitigations": {"l2sp": {}}},
                      train={"max_steps": 4, "eval_every": 2})  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_pipeline(load_config(path, []))
    on_disk = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    errors = [str(e) for e in _validator().iter_errors(on_disk)]
    assert errors == []
    # every stage wrote its part, and the file is exactly the returned model
    parts = (results.base, results.tuned, results.training, results.mitigations,
             results.calibration, results.compare, results.forgetting, results.data)  # fmt: skip
    assert all(part is not None for part in parts)
    assert on_disk == results.to_json()
    assert read_results(tmp_path / "runs" / "tiny" / "results.json") == results


def test_train_only_results_validate_too(tmp_path, tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      train={"max_steps": 2, "eval_every": 2})  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_pipeline(load_config(path, []), stages=Stages(base_eval=False, tuned_eval=False))
    assert results.training is not None and results.training.steps == 2
    assert results.base is None and results.tuned is None and results.compare is None
    on_disk = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert [str(e) for e in _validator().iter_errors(on_disk)] == []


def test_untyped_results_load_in_the_new_layout():
    raw = json.loads(UNTYPED.read_text())
    assert not _validator().is_valid(raw)  # the old layout is not what is written now
    results = read_results(UNTYPED)
    assert results.tuned is not None and results.base is not None
    # the per-class table and the confusion matrix left the metrics: only numbers remain
    assert results.tuned.metrics == {k: v for k, v in raw["tuned"]["metrics"].items()
                                     if isinstance(v, float)}  # fmt: skip
    assert results.tuned.per_class is not None
    assert results.tuned.per_class["neg"].support == raw["tuned"]["metrics"]["per_class"]["neg"][
        "support"]  # fmt: skip
    assert results.tuned.confusion_matrix is not None
    assert results.tuned.confusion_matrix.matrix == raw["tuned"]["metrics"]["confusion_matrix"][
        "matrix"]  # fmt: skip
    # the mitigations' facts moved under "facts"
    assert results.mitigations == Mitigations(
        used=["ewc"], facts={k: v for k, v in raw["mitigations"].items() if k != "used"}
    )
    assert results.forgetting is not None
    assert results.forgetting.retention_score == raw["forgetting"]["retention_score"]
    assert results.calibration is not None
    assert results.calibration.temperature == raw["calibration"]["temperature"]
    assert results.compare is not None and [r.name for r in results.compare.rows] == [
        "base 0-shot", "base 2-shot", "fine-tuned"]  # fmt: skip
    # rewritten, it is a current results.json
    assert _validator().is_valid(results.to_json())
    assert Results.model_validate(results.to_json()) == results


def test_the_report_renders_an_untyped_results_file(tmp_path):
    run = tmp_path / "old-run"
    run.mkdir()
    shutil.copy(UNTYPED, run / "results.json")
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "not measured in this run" not in page.split('id="metrics"')[1]  # every part shown
    assert "fine-tuned, per class" in page and "base, confusion matrix" in page
    assert "retention score (95% CI)</dt><dd>0.999 [0.997, 1.000]" in page  # 0.998562


def test_unknown_keys_and_wrong_types_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        Evaluation.model_validate({"n": 1, "metrics": {}, "unknown": 1})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"run": "x", "training": {"steps": "many", "stopped": "done"}}))
    with pytest.raises(TunelabError, match=r"training\.steps") as info:
        read_results(path)
    assert "results.schema.json" in (info.value.hint or "")


def test_write_results_round_trips_non_finite_numbers(tmp_path):
    results = Results.model_validate(
        {"run": "x", "training": {"steps": 1, "stopped": "completed", "best_val_loss": None},
         "tuned": {"n": 1, "metrics": {"perplexity": float("inf")}}}
    )  # fmt: skip
    write_results(tmp_path / "results.json", results)
    assert "Infinity" in (tmp_path / "results.json").read_text()  # as json.dumps writes it
    assert read_results(tmp_path / "results.json") == results
