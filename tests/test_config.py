"""Config loading: defaults, overrides, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.config import Config, apply_overrides, dump_config, load_config, parse_config
from tunelab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_quickstart():
    cfg = load_config(None)
    assert cfg.model.base == "smollm2-135m-instruct"
    assert cfg.data.source == "rotten_tomatoes"
    assert cfg.method.kind == "lora"


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n  epoch: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "train.epoch: unknown key; did you mean 'epochs'?" in text
    assert "train.learning_rate: unknown key" in text
    assert len(err.value.problems) == 2  # every problem at once


def test_wrong_type_names_the_path_and_value():
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"batch_size": "big"}, "method": {"lora": {"r": 0}}})
    paths = dict(err.value.problems)
    assert "train.batch_size" in paths and "'big'" in paths["train.batch_size"]
    assert "method.lora.r" in paths


def test_cross_field_rule_explains_the_fix():
    with pytest.raises(ConfigError) as err:
        parse_config({"method": {"kind": "frozen"}})
    assert "head: classifier" in str(err.value)
    with pytest.raises(ConfigError, match="leaves no training data"):
        parse_config({"data": {"split": {"val": 0.5, "test": 0.5}}})


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["train.lr=1e-3", "train.early_stopping=null", "name=x"])
    cfg = parse_config(data)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.early_stopping is None
    assert cfg.name == "x"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  base: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(path)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_resolved_config_round_trips():
    cfg = load_config(None, ["train.epochs=2"])
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    assert isinstance(load_config(path), Config)


def test_config_reference_is_current():
    """docs/config.md is generated from the schema; regenerate with the command it names."""
    from tunelab.config.reference import render_reference

    assert (ROOT / "docs" / "config.md").read_text() == render_reference(), (
        "docs/config.md is stale: run `python -m tunelab.config.reference > docs/config.md`"
    )


def test_packaged_quickstart_is_the_example():
    """`tunelab run` with no config runs exactly examples/quickstart.yaml."""
    from tunelab.cli._common import QUICKSTART, get_config

    assert QUICKSTART.read_text() == (ROOT / "examples" / "quickstart.yaml").read_text()
    assert get_config(None, None).name == "quickstart"


def test_cli_reference_is_current():
    from tunelab.cli.reference import render_cli_reference

    assert (ROOT / "docs" / "cli.md").read_text() == render_cli_reference(), (
        "docs/cli.md is stale: run `python -m tunelab.cli.reference > docs/cli.md`"
    )


def test_data_preparation_rules_name_the_key():
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"clean": {"steps": ["unicod"]}}})
    assert "data.clean.steps" in str(err.value) and "unicode" in str(err.value)
    with pytest.raises(ConfigError, match="group_by"):
        parse_config({"data": {"split": {"method": "group"}}})
    with pytest.raises(ConfigError, match="set source inside each task"):
        parse_config({"data": {"source": "x.jsonl", "tasks": [{"name": "a", "source": "y"}]}})
    with pytest.raises(ConfigError, match="distinct"):
        parse_config(
            {"data": {"tasks": [{"name": "a", "source": "y"}, {"name": "a", "source": "z"}]}}
        )
    cfg = parse_config({"data": {"split": {"val": 50, "test": 0.1}, "anonymize": None}})
    assert cfg.data.split.val == 50 and isinstance(cfg.data.split.val, int)
    assert cfg.data.anonymize is None


def test_anonymize_types_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="emial"):
        parse_config({"data": {"anonymize": {"types": ["emial"]}}})
    with pytest.raises(ConfigError, match="name_model"):
        parse_config({"data": {"anonymize": {"types": ["email", "person"]}}})
