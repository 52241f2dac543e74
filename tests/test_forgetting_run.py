"""Forgetting inside a run: measured before/after, mitigations in the loop, exact resume,
the retention threshold, and the `forgetting` / `forgetting sweep` verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.config import parse_config
from tunelab.errors import ConfigError, ForgettingError
from tunelab.recipes.forgetting_sweep import choose_alpha
from tunelab.recipes.run import Stages, run_pipeline
from tunelab.training.checkpoint import read_pointer

runner = CliRunner()
SMALL = {"max_examples": 6, "max_new_tokens": 4, "batch_size": 8, "bootstrap": 200,
         "general_examples": 16}  # fmt: skip


def _cfg(tmp_path: Path, model: Path, data: Path, out: str, **sections: dict) -> dict:
    forgetting = {**SMALL, **sections.pop("forgetting", {})}
    return tiny_config(model, data, tmp_path / out, forgetting=forgetting, **sections)


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    last = read_pointer(run / "checkpoints")["last"]
    return load_file(run / "checkpoints" / str(last) / "trainable.safetensors")


ALL_LOOP = {"replay": {"ratio": 0.25}, "ewc": {"samples": 4}, "si": {"general_steps": 2},
            "l2sp": {"strength": 0.5}, "kd": {"batch_size": 2}}  # fmt: skip


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_composed_mitigations_resume_exactly(tmp_path, tiny_model_dir, sentiment_file, kind):
    sections = dict(
        method={"kind": kind},
        train={"max_steps": 8, "eval_every": 3, "log_every": 1, "keep_checkpoints": 2},
        forgetting={"suite": "none", "mitigations": ALL_LOOP},
        eval={"base": False},
    )
    ref = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "ref", **sections))
    run_pipeline(ref, stages=Stages(base_eval=False, tuned_eval=False))

    cfg = parse_config(_cfg(tmp_path, tiny_model_dir, sentiment_file, "crash", **sections))

    def crash(event: dict) -> None:
        if event["step"] == 5 and "loss" in event:
            raise KeyboardInterrupt  # after the step-3 checkpoint, before the step-6 one

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False), progress=crash)
    assert read_pointer(cfg.run_dir / "checkpoints")["last"] == "step-000003"
    extra = load_file(cfg.run_dir / "checkpoints" / "step-000003" / "extra.safetensors")
    assert any(k.startswith("ewc/") for k in extra) and any(k.startswith("si/") for k in extra)
    run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False), resume=True)

    a, b = _last_weights(ref.run_dir), _last_weights(cfg.run_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # every penalty is logged per step, each step once
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == list(range(1, 9))
    for name in ("ewc", "si", "l2sp", "kd"):
        assert all(f"penalty.{name}" in x for x in steps), name
    assert steps[0]["penalty.l2sp"] == 0.0 and steps[-1]["penalty.l2sp"] > 0.0
    # SI leaves its importances next to the model for the next round
    assert (cfg.run_dir / "model" / "si_importance.safetensors").is_file()


def test_run_measures_retention_and_caches_the_base(tmp_path, tiny_model_dir, sentiment_file):
    sets = [{"name": "sentiment", "source": str(sentiment_file),
             "label_words": {"pos": "positive", "neg": "negative"},
             "template": "classification"}]  # fmt: skip
    raw = _cfg(tmp_path, tiny_model_dir, sentiment_file, "one", forgetting={"sets": sets},
               eval={"base": False})  # fmt: skip
    results = run_pipeline(parse_config(raw))
    report = results.forgetting
    assert report is not None
    names = set(report.probes)
    assert {"qa_loglik", "qa_match", "prose_ppl", "chat_ppl", "drift_kl",
            "instruct_rougeL", "sentiment"} <= names  # fmt: skip
    assert report.probes["sentiment"].metric == "accuracy"
    assert report.retention_score is not None and 0.0 <= report.retention_score <= 1.0
    lo, hi = report.retention_ci95
    assert lo is not None and hi is not None and lo <= report.retention_score <= hi
    saved = json.loads((tmp_path / "one" / "tiny" / "forgetting.json").read_text())
    assert saved == report.to_json()
    assert report.base_cached is False or report.base_cached is True
    # a second run of the same base reuses the base measurement
    raw["name"] = "two"
    again = run_pipeline(parse_config(raw)).forgetting
    assert again is not None and again.base_cached is True
    assert again.probes["qa_loglik"].base == report.probes["qa_loglik"].base


def test_min_retention_fails_the_run_after_saving(tmp_path, tiny_model_dir, sentiment_file):
    raw = _cfg(tmp_path, tiny_model_dir, sentiment_file, "strict",
               method={"kind": "full"}, train={"lr": 0.05, "max_steps": 6},
               forgetting={"min_retention": 1.0}, eval={"base": False})  # fmt: skip
    with pytest.raises(ForgettingError, match=r"below forgetting\.min_retention 1\.0"):
        run_pipeline(parse_config(raw))
    run = tmp_path / "strict" / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert results["forgetting"]["retention_score"] < 1.0
    assert (run / "model").is_dir()


def test_forgetting_verbs(tmp_path, tiny_model_dir, sentiment_file):
    import yaml

    raw = _cfg(tmp_path, tiny_model_dir, sentiment_file, "verbs",
               train={"lr": 0.02, "max_steps": 6}, eval={"base": False})  # fmt: skip
    cfg = parse_config(raw)
    run_pipeline(cfg, stages=Stages(base_eval=False, tuned_eval=False))
    path = tmp_path / "verbs.yaml"
    path.write_text(yaml.safe_dump(raw))

    out = tmp_path / "report.json"
    result = runner.invoke(app, ["forgetting", "--model", str(cfg.run_dir), "-c", str(path),
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "retention score" in result.output
    assert 0.0 <= json.loads(out.read_text())["retention_score"] <= 1.0

    result = runner.invoke(app, ["forgetting", "sweep", str(path), "--save"])
    assert result.exit_code == 0, result.output
    sweep = json.loads((cfg.run_dir / "forgetting_sweep.json").read_text())
    by_alpha = {r["alpha"]: r for r in sweep["rows"]}
    assert sorted(by_alpha) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # alpha 0 is the start: LoRA with B = 0 is the base model itself
    assert by_alpha[0.0]["retention_score"] == 1.0
    assert sweep["chosen_alpha"] in by_alpha
    assert (cfg.run_dir / "model-wise" / "tunelab_model.json").is_file()

    result = runner.invoke(app, ["forgetting"])
    assert isinstance(result.exception, ConfigError)


def test_threshold_exit_status_is_3(tmp_path, tiny_model_dir, sentiment_file):
    import yaml

    raw = _cfg(tmp_path, tiny_model_dir, sentiment_file, "exit",
               method={"kind": "full"}, train={"lr": 0.05, "max_steps": 4},
               forgetting={"min_retention": 1.0}, eval={"base": False})  # fmt: skip
    path = tmp_path / "exit.yaml"
    path.write_text(yaml.safe_dump(raw))
    import subprocess
    import sys

    env_path = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-m", "tunelab", "run", str(path)],
                          capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": env_path})  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "forgetting.min_retention" in proc.stderr


def test_choose_alpha_rule():
    rows = [
        {"alpha": 0.0, "metrics": {"accuracy": 0.70}, "retention_score": 1.0},
        {"alpha": 0.5, "metrics": {"accuracy": 0.84}, "retention_score": 0.97},
        {"alpha": 1.0, "metrics": {"accuracy": 0.86}, "retention_score": 0.80},
    ]
    assert choose_alpha(rows, 0.95)["alpha"] == 0.5
    assert choose_alpha(rows, 0.5)["alpha"] == 1.0
    assert choose_alpha(rows[1:], 0.99)["alpha"] == 0.5  # none qualifies: most retention


def test_replay_with_a_classifier_head_is_refused(tmp_path, tiny_model_dir, sentiment_file):
    raw = _cfg(tmp_path, tiny_model_dir, sentiment_file, "clf",
               method={"kind": "full", "head": "classifier"},
               forgetting={"suite": "none", "mitigations": {"replay": {}}})  # fmt: skip
    with pytest.raises(ForgettingError, match="replay"):
        run_pipeline(parse_config(raw))


def test_si_second_round_protects_the_first(tmp_path, tiny_model_dir, sentiment_file):
    """Round 1 (full FT, SI) leaves importances next to its model; round 2 starts from that
    model and reads them: it matches every parameter of round 1."""
    round1 = parse_config(
        _cfg(tmp_path, tiny_model_dir, sentiment_file, "r1", method={"kind": "full"},
             forgetting={"suite": "none", "mitigations": {"si": {"general_steps": 2}}})
    )  # fmt: skip
    first = run_pipeline(round1, stages=Stages(base_eval=False, tuned_eval=False))
    assert first.mitigations is not None and first.mitigations.used == ["si"]
    model1 = round1.run_dir / "model"
    si = {"general_steps": 0, "previous": str(model1)}
    raw = _cfg(tmp_path, tiny_model_dir, sentiment_file, "r2", method={"kind": "full"},
               forgetting={"suite": "none", "mitigations": {"si": si}})  # fmt: skip
    raw["model"]["base"] = str(model1)  # round 2 starts where round 1 ended
    raw["train"]["log_every"] = 1
    second = run_pipeline(parse_config(raw), stages=Stages(base_eval=False, tuned_eval=False))
    importances = load_file(model1 / "si_importance.safetensors")
    assert second.mitigations is not None
    assert second.mitigations.facts["si_matched_previous"] == len(importances) > 0
    # with no consolidation path of its own, round 2's penalty comes from round 1 only
    lines = [json.loads(x) for x in (tmp_path / "r2" / "tiny" / "metrics.jsonl").read_text()
             .splitlines() if '"loss"' in x]  # fmt: skip
    assert lines[0]["penalty.si"] == 0.0 and lines[-1]["penalty.si"] > 0.0


def test_a_rerun_without_si_leaves_no_stale_importances(tmp_path, tiny_model_dir, sentiment_file):
    sections = dict(method={"kind": "full"}, eval={"base": False})
    si = {"suite": "none", "mitigations": {"si": {"general_steps": 1}}}
    with_si = _cfg(tmp_path, tiny_model_dir, sentiment_file, "again", **sections, forgetting=si)
    run_pipeline(parse_config(with_si), stages=Stages(base_eval=False, tuned_eval=False))
    model = tmp_path / "again" / "tiny" / "model"
    assert (model / "si_importance.safetensors").is_file()
    without = _cfg(tmp_path, tiny_model_dir, sentiment_file, "again", **sections,
                   forgetting={"suite": "none", "mitigations": {"l2sp": {}}})  # fmt: skip
    run_pipeline(parse_config(without), stages=Stages(base_eval=False, tuned_eval=False))
    assert not (model / "si_importance.safetensors").exists()
