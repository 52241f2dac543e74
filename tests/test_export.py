"""``tunelab export`` on tiny LoRA and full fine-tuning runs.

The exported folders are loaded by plain transformers in a subprocess that never imports
tunelab or peft, and their logits are compared with the (unmerged) tunelab model's.
Tolerances (docs/export.md): fp32 export vs unmerged model, max |Δlogit| ≤ 1e-4 (measured
1.2e-7 on the tiny model and 6.8e-5 on the quickstart: merging only reorders fp32 sums).
int8 weight-only vs fp32 export: max |Δlogit| ≤ 0.05 and top-1 agreement ≥ 0.9 over every
position (measured on these prompts: see the comment at ``INT8_MAX_ABS``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import tiny_config, write_sentiment_jsonl
from tunelab.cli import export as export_cli
from tunelab.cli.main import app as tunelab_app
from tunelab.errors import ConfigError, ModelError
from tunelab.export.folder import export_model
from tunelab.export.model_card import model_card
from tunelab.models.saved import load_trained
from tunelab.results import Results

runner = CliRunner()
app = typer.Typer()


@app.callback()
def _root() -> None:
    """A group, so the verb is invoked by its name as under ``tunelab``."""


app.command("export")(export_cli.export)

PROMPTS = ["the film was great", "boring and bland plot", "classify the review: messy acting"]
FP32_MAX_ABS = 1e-4
# int8 vs fp32 on the tiny model: measured max |Δlogit| 0.0030 (logits span about ±0.5),
# top-1 agreement 69/69 positions; asserted with ~15x margin on the difference.
INT8_MAX_ABS = 0.05
INT8_TOP1 = 0.9

# Runs in a fresh interpreter: only torch + transformers (+ torchao for int8, imported by
# transformers itself). Prints, per folder, the prompt ids, logits and what was loaded.
PLAIN_LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(sys.argv[1])
    out = {}
    for folder in spec["folders"]:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        rows = []
        for prompt in spec["prompts"]:
            messages = [{"role": "user", "content": prompt}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0]
            rows.append({"ids": ids[0].tolist(), "logits": logits.tolist()})
        generated = model.generate(input_ids=ids, max_new_tokens=3)
        out[folder] = {
            "rows": rows,
            "weight_type": type(model.model.layers[0].self_attn.q_proj.weight).__name__,
            "generated": generated.shape[1] - ids.shape[1],
            "repetition_penalty": model.generation_config.repetition_penalty,
        }
    assert "tunelab" not in sys.modules and "peft" not in sys.modules, "not standalone"
    print(json.dumps(out))
    """
)


def _train(root: Path, model_dir: Path, name: str, **sections: dict) -> Path:
    data = write_sentiment_jsonl(root / f"{name}.jsonl")
    cfg = tiny_config(model_dir, data, root / "runs", forgetting={"suite": "none"},
                      compare={"enabled": False}, **sections)  # fmt: skip
    cfg["name"] = name
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(tunelab_app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    return root / "runs" / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    return {
        "lora": _train(root, tiny_model_dir, "lora", train={"max_steps": 6, "eval_every": 3}),
        "full": _train(root, tiny_model_dir, "full", method={"kind": "full", "head": "classifier"},
                       train={"max_steps": 4, "eval_every": 2}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def exports(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("exported")
    return {
        "lora": export_model(runs["lora"], root / "lora"),
        "int8": export_model(runs["lora"], root / "int8", quantize="int8"),
        "full": export_model(runs["full"] / "model", root / "full"),
    }


@pytest.fixture(scope="module")
def plain(exports: dict[str, Any]) -> dict[str, Any]:
    """Each export loaded by plain transformers in one subprocess, keyed like ``exports``."""
    spec = {"folders": [facts["out"] for facts in exports.values()], "prompts": PROMPTS}
    command = [sys.executable, "-c", PLAIN_LOAD, json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(spec["folders"][0]))
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return {key: loaded[facts["out"]] for key, facts in exports.items()}


def _tunelab_logits(run: Path, rows: list[dict[str, Any]]) -> list[torch.Tensor]:
    """The unmerged tunelab model's logits on the same token ids, (T, V) per prompt."""
    model, _tok, _info = load_trained(run)
    with torch.no_grad():
        return [model.lm(input_ids=torch.tensor([r["ids"]])).logits[0] for r in rows]


def _max_diff(a: list[torch.Tensor], rows: list[dict[str, Any]]) -> float:
    return max(
        (x - torch.tensor(r["logits"])).abs().max().item() for x, r in zip(a, rows, strict=True)
    )


@pytest.mark.parametrize("key", ["lora", "full"])
def test_fp32_export_loads_standalone_with_the_same_logits(
    key, runs, exports, plain, tiny_model_dir
):
    rows = plain[key]["rows"]
    reference = _tunelab_logits(runs[key], rows)
    diff = _max_diff(reference, rows)
    print(f"{key}: fp32 export vs tunelab model, max |Δlogit| {diff:.2e}")
    assert diff <= FP32_MAX_ABS
    assert plain[key]["weight_type"] in ("Parameter", "Tensor")
    assert plain[key]["generated"] >= 1  # generate() works with the saved generation config
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert exports[key]["parameters"] == sum(p.numel() for p in base.parameters())


def test_lora_merge_is_not_a_no_op(runs, plain):
    """The adapters were trained (B != 0), so the merged logits differ from the base's."""
    model, _tok, _info = load_trained(runs["lora"])
    rows = plain["lora"]["rows"]
    with torch.no_grad(), model.lm.disable_adapter():
        base = [model.lm(input_ids=torch.tensor([r["ids"]])).logits[0] for r in rows]
    assert _max_diff(base, rows) > 100 * FP32_MAX_ABS


def test_int8_export_is_smaller_loads_standalone_and_stays_close(exports, plain):
    fp32, int8 = exports["lora"], exports["int8"]
    fp32_weights = (Path(fp32["out"]) / "model.safetensors").stat().st_size
    int8_weights = (Path(int8["out"]) / "model.safetensors").stat().st_size
    print(f"int8/fp32 size: folder {int8['bytes'] / fp32['bytes']:.3f}, "
          f"weights {int8_weights / fp32_weights:.3f}")  # fmt: skip
    assert int8["bytes"] < fp32["bytes"] and int8_weights < 0.75 * fp32_weights
    assert int8["parameters"] == fp32["parameters"]
    assert plain["int8"]["weight_type"] == "Int8Tensor"  # reloaded as int8, not dequantised
    a = [torch.tensor(r["logits"]) for r in plain["lora"]["rows"]]
    b = [torch.tensor(r["logits"]) for r in plain["int8"]["rows"]]
    diff = max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
    top1 = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    positions = sum(x.shape[0] for x in a)
    print(f"int8 vs fp32: max |Δlogit| {diff:.5f}, top-1 agreement {top1}/{positions}")
    assert 0 < diff <= INT8_MAX_ABS
    assert top1 / positions >= INT8_TOP1
    config = json.loads((Path(int8["out"]) / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"


def test_folder_contents_generation_config_and_info(runs, exports):
    lora, full = Path(exports["lora"]["out"]), Path(exports["full"]["out"])
    for name in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tunelab_model.json",
        "README.md",
        "calibration.json",
        "chat_template.jinja",
    ]:
        assert (lora / name).is_file(), name  # fmt: skip
    assert not list(lora.glob("adapter_*")), "the adapter is merged, not shipped"
    assert (lora / "calibration.json").read_text() == (
        runs["lora"] / "model" / "calibration.json").read_text()  # fmt: skip
    gen = json.loads((lora / "generation_config.json").read_text())
    tok = load_trained(runs["lora"])[1]
    assert gen["do_sample"] is False and gen["repetition_penalty"] == pytest.approx(1.1)
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    info = json.loads((lora / "tunelab_model.json").read_text())
    assert info["kind"] == "full" and info["exported"]["kind_before_export"] == "lora"
    assert info["exported"]["merged_lora"] is True and info["labels"] == ["neg", "pos"]
    assert exports["lora"]["bytes"] == sum(p.stat().st_size for p in lora.iterdir())
    assert set(exports["lora"]["files"]) == {p.name for p in lora.iterdir()}
    # classifier head: copied, and tunelab loads the export back with it
    assert (full / "classifier.safetensors").is_file()
    model, _tok, info = load_trained(full)
    assert model.classifier is not None and info["exported"]["classifier_head"] is True
    original = load_trained(runs["full"])[0].classifier
    assert original is not None and torch.equal(model.classifier.weight, original.weight)
    leftovers = [p.name for p in lora.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # temporary folders are gone


def test_model_card_reports_the_run(runs, exports):
    card = (Path(exports["lora"]["out"]) / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers"
    assert front["pipeline_tag"] == "text-generation"
    assert {"tunelab", "lora", "merged-lora"} <= set(front["tags"])
    assert "base_model" not in front  # a local folder is no hub id
    results = json.loads((runs["lora"] / "results.json").read_text())
    acc, ci = results["tuned"]["metrics"]["accuracy"], results["tuned"]["ci95"]["accuracy"]
    assert f"| accuracy | {results['base']['metrics']['accuracy']:.3f}" in card
    assert f"{acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" in card
    for heading in [
        "## How to load",
        "## Test metrics",
        "## Calibration",
        "## Data",
        "## Training",
        "## Export",
    ]:
        assert heading in card, heading  # fmt: skip
    assert f"Temperature **{results['calibration']['temperature']:.4g}**" in card
    assert f"{results['data']['rows_in']} read" in card
    assert "Not in this export: the compare table (this run did not measure it)" in card
    assert "Not in this export: the retention suite" in card
    assert "AutoModelForCausalLM.from_pretrained" in card
    int8_card = (Path(exports["int8"]["out"]) / "README.md").read_text()
    assert "torchao" in int8_card and "pip install torchao" in int8_card
    full_card = (Path(exports["full"]["out"]) / "README.md").read_text()
    assert "classifier.safetensors" in full_card and "ignores that file" in full_card


def test_model_card_renders_compare_and_forgetting():
    info = {"base": "smollm2-135m-instruct", "kind": "lora", "head": "lm", "labels": None}
    row = {"name": "fine-tuned", "model": "tuned", "shots": 0, "n": 200,
           "metrics": {"accuracy": 0.855}, "ci95": {"accuracy": [0.81, 0.9]},
           "prompt_tokens": 78.6}  # fmt: skip
    results = Results.model_validate({
        "run": "demo",
        "compare": {"primary": "accuracy", "n": 200, "rows": [row], "conclusion": "it wins"},
        "forgetting": {
            "retention_score": 0.866, "retention_ci95": [0.836, 0.876], "n_probes_in_score": 1,
            "probes": {"prose_ppl": {"metric": "nll", "base": 3.46, "tuned": 3.45,
                                     "delta": -0.0086, "ci95": [-0.025, 0.007],
                                     "significant": False, "retention": 1.009,
                                     "retention_ci95": [None, None],
                                     "higher_is_better": False}},
        },
    })  # fmt: skip
    card = model_card(info, {"weights": "fp32"}, results)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "| fine-tuned | 0 | 0.855 [0.810, 0.900] | 78.6 |" in card
    assert "**Verdict:** it wins." in card
    assert "**Retention score: 0.866 [0.836, 0.876]**" in card
    assert "| prose_ppl | nll | 3.460 | 3.450 | -0.009 [-0.025, 0.007] | 1.009 | lower |" in card
    assert "Not in this export: test metrics (this run did not measure it)" in card


def test_bare_model_folder_exports_without_results(runs, tmp_path):
    bare = tmp_path / "just-a-model"
    shutil.copytree(runs["lora"] / "model", bare)
    facts = export_model(bare, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert facts["kind"] == "lora"
    assert "no results.json beside it" in card and "## Test metrics" in card


def test_cli_exports_and_refuses_to_overwrite_without_force(runs, tmp_path):
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(runs["lora"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "from_pretrained" in result.output
    assert (out / "model.safetensors").is_file()

    again = runner.invoke(app, ["export", str(runs["lora"]), "--out", str(out)])
    assert again.exit_code == 1 and isinstance(again.exception, ConfigError)
    assert "--force" in str(again.exception)
    (out / "marker").write_text("old export")
    forced = runner.invoke(app, ["export", str(runs["lora"]), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (out / "marker").exists() and (out / "model.safetensors").is_file()

    bad = runner.invoke(app, ["export", str(runs["lora"]), "--out", str(out), "-f"])
    assert bad.exit_code == 2  # no such option: a usage error
    wrong = runner.invoke(app, ["export", str(runs["lora"]), "--out", str(tmp_path / "q"),
                                "--quantize", "int4"])  # fmt: skip
    assert wrong.exit_code == 2 and not (tmp_path / "q").exists()


def test_errors_name_the_problem(runs, tmp_path):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "hello.txt").write_text("hi")
    with pytest.raises(ModelError, match="not a tunelab run or model folder") as err:
        export_model(not_a_model, tmp_path / "out")
    assert err.value.hint and "run folder" in err.value.hint
    with pytest.raises(ModelError, match="does not exist"):
        export_model(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="holds the model being exported"):
        export_model(runs["lora"], runs["lora"], overwrite=True)
    with pytest.raises(ConfigError, match="not supported"):
        export_model(runs["lora"], tmp_path / "out", quantize="int4")
    assert not (tmp_path / "out").exists()
