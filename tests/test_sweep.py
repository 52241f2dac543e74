"""`tunelab sweep`: the search space checked at load time, and real tiny-model studies
(outputs, best.yaml, the test split never scored, pruning, resume after a crash)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import typer
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.sweep import sweep as sweep_command
from tunelab.config import Config, load_config, parse_config
from tunelab.errors import ConfigError
from tunelab.recipes.sweep import run_sweep, sweep_dir
from tunelab.recipes.sweep.trials import best_of, suggest

LR = {"low": 1.0e-4, "high": 5.0e-2, "log": True}


def _config(model_dir: Path, data: Path, out: Path, sweep: dict, **sections: dict) -> dict:
    cfg = tiny_config(model_dir, data, out, forgetting={"suite": "none"},
                      compare={"enabled": False}, **sections)  # fmt: skip
    cfg["sweep"] = {"sampler": "random", "pruner": "none", **sweep}
    return cfg


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


# ---- the space, checked when the config is loaded ------------------------------------------


def test_space_problems_are_all_reported_at_their_yaml_paths():
    problems = _problems({
        "sweep": {"metric": "val_accuracy", "space": {
            "train.lrr": {"low": 1.0e-5, "high": 1.0e-3},          # unknown key
            "train.lr": {"low": 1.0e-5, "high": 2.0},              # lr must be < 1
            "method.lora.r": {"low": 0, "high": 8},                # r must be >= 1
            "method.lora.alpha": {"choices": [16, -1]},            # alpha must be > 0
            "train.batch_size": {"low": 2, "high": 8.5},           # an integer field
            "train.schedule": {"low": 1, "high": 2},               # not a number
            "method.lora": {"choices": [1]},                       # a section
            "data.split.seed": {"choices": [0, 1]},                # changes the val rows
            "name": {"choices": ["a", "b"]},
        }},
        "eval": {"val_examples": 0},                               # val_accuracy needs some
    })  # fmt: skip
    space = {k.removeprefix("sweep.space."): v for k, v in problems.items()}
    assert "did you mean 'train.lr'" in space["train.lrr"]
    assert "value 2.0 is invalid: train.lr: Input should be less than 1" in space["train.lr"]
    assert "value 0 is invalid: method.lora.r" in space["method.lora.r"]
    assert "value -1 is invalid: method.lora.alpha" in space["method.lora.alpha"]
    assert "is an integer" in space["train.batch_size"]
    assert "not a number" in space["train.schedule"] and "choices" in space["train.schedule"]
    assert "is a section" in space["method.lora"] and "method.lora.r" in space["method.lora"]
    assert "held-out rows" in space["data.split.seed"]
    assert "cannot be searched" in space["name"]
    assert "eval.val_examples" in problems["sweep.metric"]
    assert len(problems) == 10


def test_malformed_ranges_are_rejected_with_the_fix():
    problems = _problems({"sweep": {"space": {
        "train.lr": {"low": 1.0e-3, "high": 1.0e-5},
        "train.weight_decay": {"low": 0.0, "high": 0.1, "log": True},
        "train.dropout": {"low": 0.0, "high": 0.2, "choices": [0.1]},
        "train.warmup": {"low": 0.0},
        "train.max_grad_norm": {"low": 0.5, "high": float("inf")},
        "method.lora.alpha": {"low": 1, "high": 64, "log": True, "step": 1},
    }}})  # fmt: skip
    space = {k.removeprefix("sweep.space."): v for k, v in problems.items()}
    assert space == {
        "train.lr": "low (0.001) must be below high (1e-05)",
        "train.weight_decay": "a log range needs low > 0 (got 0)",
        "train.dropout": "give either `choices` or a range (`low`, `high`), not both",
        "train.warmup": "a range needs both `low` and `high` (or give `choices`)",
        "train.max_grad_norm": "low, high and step must be finite numbers",
        "method.lora.alpha": "`step` and `log` do not combine; drop one",
    }
    # the shape of an entry is checked with the rest of the config's fields
    problems = _problems({"sweep": {"space": {
        "method.lora.r": {"choices": []}, "train.epochs": {"low": 1, "hgh": 3}}}})  # fmt: skip
    assert "at least 1 item" in problems["sweep.space.method.lora.r.choices"]
    assert problems["sweep.space.train.epochs.hgh"] == "unknown key; did you mean 'high'?"
    assert "Field required" in _problems({"sweep": {"trials": 3}})["sweep.space"]


def test_a_key_no_trial_would_use_is_refused():
    problems = _problems({"train": {"max_steps": 20}, "method": {"kind": "full"},
                          "sweep": {"space": {"train.epochs": {"low": 1, "high": 3},
                                              "method.lora.r": {"choices": [4, 8]}}}})  # fmt: skip
    assert "overrides train.epochs" in problems["sweep.space.train.epochs"]
    assert "LoRA settings do nothing" in problems["sweep.space.method.lora.r"]
    parse_config({"train": {"max_steps": 20}, "method": {"kind": "full"}, "sweep": {"space": {
        "train.epochs": {"low": 1, "high": 3}, "train.max_steps": {"choices": [None, 10]},
        "method.lora.r": {"choices": [4, 8]}, "method.kind": {"choices": ["full", "lora"]},
    }}})  # fmt: skip


def test_a_valid_space_loads_and_samples_the_field_types():
    cfg = parse_config({"sweep": {"metric": "val_accuracy", "space": {
        "train.lr": LR,
        "method.lora.r": {"choices": [4, 8, 16]},
        "train.epochs": {"low": 1, "high": 3, "step": 1},
        "train.batch_size": {"low": 4, "high": 16, "step": 4},
        "train.dropout": {"low": 0.0, "high": 0.2},
        "forgetting.mitigations.ewc.strength": {"low": 1.0, "high": 1000.0, "log": True},
    }}})  # fmt: skip
    assert cfg.sweep is not None and cfg.sweep.goal == "maximize"
    assert parse_config({"sweep": {"space": {"train.lr": LR}}}).sweep.goal == "minimize"  # type: ignore[union-attr]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = {k: suggest(trial, k, p) for k, p in cfg.sweep.space.items()}
    assert type(values["train.batch_size"]) is int and values["train.batch_size"] % 4 == 0
    assert type(values["train.epochs"]) is float and values["train.epochs"].is_integer()
    assert values["method.lora.r"] in {4, 8, 16} and 1.0e-4 <= values["train.lr"] <= 5.0e-2
    # a null optional section (ewc) becomes one holding the sampled key
    from tunelab.recipes.sweep.trials import trial_config

    trial_cfg = trial_config(cfg, values, 7, Path("out"))
    assert trial_cfg.name == "trial-007" and trial_cfg.sweep is None
    assert trial_cfg.forgetting.mitigations.ewc is not None
    assert trial_cfg.forgetting.mitigations.ewc.strength == values[
        "forgetting.mitigations.ewc.strength"]  # fmt: skip
    assert best_of({2: 0.5, 4: 0.3, 6: 0.3}, "minimize") == (4, 0.3)
    assert best_of({2: 0.5, 4: 0.7}, "maximize") == (4, 0.7)


# ---- real studies on the tiny model ---------------------------------------------------------


def _cli() -> typer.Typer:
    """The verb on its own app (tunelab.cli.main registers it the same way)."""
    app = typer.Typer()

    @app.callback()
    def _root(debug: bool = False) -> None:
        pass

    app.command("sweep")(sweep_command)
    return app


def test_sweep_writes_the_table_and_a_best_config_and_never_scores_test(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch
):
    import tunelab.recipes.run as workflow
    import tunelab.recipes.setup as starts

    def no_test(*_a, **_k):
        raise AssertionError("a sweep trial scored the test split")

    # the test split is scored by these two in the pipeline (base, tuned, compare rows)
    monkeypatch.setattr(workflow, "predict", no_test)
    monkeypatch.setattr(workflow, "score", no_test)
    prepared = []
    real_prepare = starts.prepare
    monkeypatch.setattr(
        starts, "prepare", lambda *a, **k: prepared.append(1) or real_prepare(*a, **k)
    )
    cfg = _config(tiny_model_dir, sentiment_file, tmp_path / "runs", {
        "trials": 3, "metric": "val_accuracy",
        "space": {"train.lr": LR, "method.lora.r": {"choices": [2, 4, 8]}},
    }, eval={"val_examples": 6})  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(_cli(), ["sweep", str(path)])
    assert result.exit_code == 0, result.output
    assert "3 trials (3 complete, 0 pruned, 0 failed)" in result.output
    assert "tunelab run" in result.output and "best.yaml" in result.output

    root = tmp_path / "runs" / "tiny" / "sweep"
    rows = list(csv.DictReader((root / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"complete"}
    assert all(r["method.lora.r"] in {"2", "4", "8"} and r["train.lr"] for r in rows)
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)  # accuracies on val
    summary = json.loads((root / "summary.json").read_text())
    assert summary["metric"] == "val_accuracy" and summary["direction"] == "maximize"
    best = summary["best"]
    assert best["value"] == max(float(r["value"]) for r in rows)

    # best.yaml: the full config with the winner's values, no sweep, a new name
    winner = load_config(root / "best.yaml")
    assert isinstance(winner, Config) and winner.sweep is None and winner.name == "tiny-best"
    assert winner.method.lora.r == best["params"]["method.lora.r"]
    assert winner.train.lr == pytest.approx(best["params"]["train.lr"])
    assert winner.forgetting.suite == "none" and winner.tracking.tensorboard  # the user's

    # data prepared once and linked into every trial; checkpoints gone, the best model kept
    assert len(prepared) == 1
    for n in range(3):
        folder = root / "trials" / f"trial-{n:03d}"
        assert (folder / "data").resolve() == (root / "data").resolve()
        assert not (folder / "checkpoints").exists()
        assert (folder / "model").is_dir() == (n == best["trial"])
        results = json.loads((folder / "results.json").read_text())
        assert not {"base", "tuned", "compare", "calibration", "forgetting"} & set(results)


def test_the_median_pruner_stops_a_trial_worse_than_the_median(
    tmp_path, tiny_model_dir, sentiment_file
):
    cfg = parse_config(_config(tiny_model_dir, sentiment_file, tmp_path / "runs", {
        "trials": 2, "pruner": "median", "startup_trials": 1,
        "space": {"train.lr": {"choices": [5.0e-2, 1.0e-7]}},
    }, train={"max_steps": 8, "eval_every": 2}, eval={"val_examples": 0}))  # fmt: skip
    root = sweep_dir(cfg)
    root.mkdir(parents=True)
    # the same study the sweep opens: the good lr first, then one that cannot learn
    study = optuna.create_study(storage=f"sqlite:///{root / 'study.db'}", study_name="tiny")
    study.enqueue_trial({"train.lr": 5.0e-2})
    study.enqueue_trial({"train.lr": 1.0e-7})
    summary = run_sweep(cfg)
    first, second = summary["rows"]
    assert first["state"] == "complete" and first["steps"] == 8
    # stopped at a validation before the end (step 4 here: at step 2 the good lr's first
    # big updates had not yet lowered its val loss below the untrained one's)
    assert second["state"] == "pruned" and second["steps"] in {2, 4, 6}
    assert summary["counts"] == {"complete": 1, "pruned": 1, "failed": 0, "interrupted": 0,
                                 "total": 2}  # fmt: skip
    lines = (root / "trials" / "trial-001" / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(x)["step"] for x in lines) == second["steps"]


def test_a_sweep_continues_where_it_stopped(tmp_path, tiny_model_dir, sentiment_file):
    data = _config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                   {"trials": 2, "space": {"train.lr": LR}},
                   train={"max_steps": 4, "eval_every": 2}, eval={"val_examples": 0})  # fmt: skip
    with pytest.raises(ConfigError, match="no sweep to continue"):
        run_sweep(parse_config(data), resume=True)
    events: list[str] = []
    run_sweep(parse_config(data), events=events.append)
    data["sweep"]["trials"] = 4
    summary = run_sweep(parse_config(data), resume=True, events=events.append)
    started = [e.split(":")[0] for e in events if "=" in e]  # "trial NNN: train.lr=..."
    assert started == ["trial 000", "trial 001", "trial 002", "trial 003"]
    lrs = [r["params"]["train.lr"] for r in summary["rows"]]
    assert len(set(lrs)) == 4  # the sampler's seed moved on: no value drawn twice
    assert summary["counts"]["total"] == 4
    # a full study runs nothing more; a changed config is refused before any compute
    events.clear()
    run_sweep(parse_config(data), events=events.append)
    assert not [e for e in events if "=" in e]
    data["train"]["lr"] = 1.0e-3
    with pytest.raises(ConfigError, match=r"another config \(train\.lr differ"):
        run_sweep(parse_config(data))


def test_a_trial_left_running_by_a_crash_is_failed_and_run_again(
    tmp_path, tiny_model_dir, sentiment_file
):
    cfg = parse_config(_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                               {"trials": 1, "space": {"train.lr": LR}},
                               train={"max_steps": 2, "eval_every": 2},
                               eval={"val_examples": 0}))  # fmt: skip
    root = sweep_dir(cfg)
    root.mkdir(parents=True)
    study = optuna.create_study(storage=f"sqlite:///{root / 'study.db'}", study_name="tiny")
    crashed = study.ask()  # RUNNING, as a killed process leaves it
    crashed.suggest_float("train.lr", 1.0e-4, 5.0e-2, log=True)
    summary = run_sweep(cfg)
    first, retry = summary["rows"]
    assert first["state"] == "interrupted" and retry["state"] == "complete"
    assert retry["retry_of"] == 0 and retry["params"] == first["params"]
    assert summary["counts"]["interrupted"] == 1 and summary["counts"]["total"] == 1
    assert summary["best"]["trial"] == 1


def test_a_metric_training_does_not_log_is_refused_before_any_trial(
    tmp_path, tiny_model_dir, sentiment_file
):
    cfg = parse_config(_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                               {"metric": "val_bleu", "space": {"train.lr": LR}}))  # fmt: skip
    with pytest.raises(ConfigError, match="val_accuracy, val_f1_macro"):
        run_sweep(cfg)
    assert not (sweep_dir(cfg) / "trials").exists()
    with pytest.raises(ConfigError, match="no `sweep:` section"):
        run_sweep(parse_config({}))


def test_a_failed_trial_is_recorded_and_ctrl_c_is_resumable(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch
):
    """The study's bookkeeping with training replaced by a stand-in: a trial that diverges
    is failed (with its error) and the study goes on; a Ctrl-C'd trial runs again."""
    import tunelab.recipes.sweep.study as study_module
    from tunelab.errors import TrainingError

    calls: list[float] = []

    def fake_pipeline(cfg, *, stages, resume, progress):
        assert stages == study_module.TRAIN_ONLY and resume  # data reused, train only
        calls.append(cfg.train.lr)
        if len(calls) == 2:
            raise TrainingError("loss became nan at step 3; training stopped\nmore")
        if len(calls) == 3:
            raise KeyboardInterrupt
        (cfg.run_dir / "metrics.jsonl").write_text(
            json.dumps({"step": 4, "val_loss": cfg.train.lr}) + "\n"
        )

    monkeypatch.setattr(study_module, "run_pipeline", fake_pipeline)
    cfg = parse_config(_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                               {"trials": 3, "space": {"train.lr": LR}}))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg)
    rows = json.loads((sweep_dir(cfg) / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["complete", "failed", "interrupted"]
    assert rows[1]["error"] == "loss became nan at step 3; training stopped"
    summary = run_sweep(cfg)
    states = [r["state"] for r in summary["rows"]]
    assert states == ["complete", "failed", "interrupted", "complete"]  # a failure counts
    assert summary["rows"][3]["retry_of"] == 2 and calls[3] == calls[2]
    assert summary["counts"]["total"] == 3 and summary["finished"]
    assert summary["best"]["value"] == min(calls[0], calls[3])
