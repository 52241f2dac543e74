"""``tunelab distill`` on the tiny model: the cut student, the learning signal, the outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

import tunelab
from conftest import kill_after_checkpoint, tiny_config, write_sentiment_jsonl
from tunelab.cli.distill import distill
from tunelab.cli.main import app as main_app
from tunelab.config import load_config, parse_config
from tunelab.errors import ConfigError
from tunelab.models.saved import load_trained
from tunelab.models.student import check_vocab, mean_kl, merged_lm, shallow_student, student_layers
from tunelab.recipes.distill import distill_stage
from tunelab.recipes.setup import setup
from tunelab.recipes.stages import evaluate_stage
from tunelab.training.checkpoint import read_pointer

runner = CliRunner()
app = typer.Typer()
app.command("distill")(distill)


@app.callback()
def _root() -> None:
    """A local app: main.py registers the verb itself."""


@pytest.fixture(scope="module")
def four_layer_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest tiny model with 4 decoder layers (so every other layer leaves 2)."""
    folder = tmp_path_factory.mktemp("tiny-4-layers")
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher_run(four_layer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tuning run on the 4-layer model (no retention suite, no compare); its
    config file. (LoRA barely moves the random tiny model in a few steps: a near-uniform
    teacher leaves the cut student nothing to learn; the LoRA merge is tested above.)"""
    tmp = tmp_path_factory.mktemp("distill-run")
    data = write_sentiment_jsonl(tmp / "sentiment.jsonl", n=80)
    cfg = tiny_config(four_layer_dir, data, tmp / "runs", forgetting={"suite": "none"},
                      compare={"enabled": False}, eval={"base": False, "bootstrap": 0},
                      method={"kind": "full"}, train={"max_steps": 30, "lr": 1e-2,
                      "eval_every": 15})  # fmt: skip
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(main_app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def distilled(teacher_run: Path) -> tuple[dict, str]:
    """``tunelab distill`` through the CLI: 40 steps of soft targets only (alpha 1: the
    cut student keeps the teacher's last layer and starts close, so with hard targets
    mixed in the KL need not fall), written beside the run."""
    out = teacher_run.parent / "distilled"
    result = runner.invoke(app, ["distill", str(teacher_run), "--set", "distill.steps=40",
                                 "--set", "distill.lr=3e-3", "--set", "distill.alpha=1.0",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "distill.json").read_text()), result.output


def _lora_teacher(lm: LlamaForCausalLM) -> PeftModel:
    """A LoRA model whose adapters are not zero (so merging changes the weights)."""
    torch.manual_seed(2)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                        init_lora_weights=False)  # fmt: skip
    return get_peft_model(lm, config)


# ---- the cut student ---------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_shallow_student_keeps_the_requested_layers(four_layer_dir, lora):
    teacher = AutoModelForCausalLM.from_pretrained(four_layer_dir).eval()
    if lora:
        teacher = _lora_teacher(teacher)
    reference = merged_lm(teacher)  # the weights the student must start from
    student = shallow_student(teacher, [0, 3])

    assert isinstance(teacher, PeftModel) == lora  # the teacher itself is not merged
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    t_state, s_state = reference.state_dict(), student.state_dict()
    for name, value in s_state.items():
        for j, i in enumerate([0, 3]):
            name = name.replace(f"model.layers.{j}.", f"model.layers.{i}.", 1) \
                if name.startswith(f"model.layers.{j}.") else name  # fmt: skip
        assert torch.equal(value, t_state[name]), name
    if lora:  # the merged adapters reached the student
        plain = AutoModelForCausalLM.from_pretrained(four_layer_dir)
        assert not torch.equal(s_state["model.layers.1.mlp.down_proj.weight"],
                               plain.model.layers[3].mlp.down_proj.weight)  # fmt: skip

    ids = torch.tensor([[1, 5, 9, 14, 20]])
    loss = student(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    cached = student.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    plain_out = student.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5,
                                 do_sample=False, use_cache=False)  # fmt: skip
    assert cached.shape == (1, 10)
    assert torch.equal(cached, plain_out)  # the KV cache indexes the student's own layers


def test_student_layers_are_evenly_spaced_with_the_first_and_the_last():
    # 15 of 30: round(i * 29 / 14), i = 0..14 (14.5 rounds to 14)
    assert student_layers(15, 30) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert student_layers(None, 30) == student_layers(15, 30)  # half, rounded up
    assert student_layers(None, 4) == [0, 3] and student_layers(None, 5) == [0, 2, 4]
    assert student_layers(1, 4) == [3] and student_layers([1, 2], 4) == [1, 2]
    for bad in ([4], [0, 5], 5, 0):
        with pytest.raises(ConfigError, match=r"distill\.layers .* does not fit a teacher of 4"):
            student_layers(bad, 4)


def test_the_distill_section_is_validated_all_at_once_naming_each_key():
    cfg = parse_config({"distill": {"steps": 5, "layers": 15}})
    assert cfg.distill.steps == 5 and cfg.distill.alpha == 0.5 and cfg.distill.general == 0.1
    bad = {"alpha": 1.5, "general": 1.0, "steps": 0, "temperature": 0, "layers": [2, 1],
           "lr": 2.0, "batchsize": 4}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_config({"distill": bad})
    problems = dict(err.value.problems)
    assert set(problems) == {f"distill.{k}" for k in bad}
    assert "did you mean 'batch_size'" in problems["distill.batchsize"]
    assert "strictly increasing" in problems["distill.layers"]
    with pytest.raises(ConfigError, match=r"either distill\.layers .* or distill\.student"):
        parse_config({"distill": {"layers": 3, "student": "smollm2-135m-instruct"}})


# ---- distillation end to end -------------------------------------------------------------


def test_distillation_lowers_the_kl_to_the_teacher(distilled, teacher_run):
    result, output = distilled
    kl = result["student"]["val_kl"]
    assert kl["after"] < 0.5 * kl["before"], kl
    assert "teacher vs student" in output and "KL(teacher" in output
    # held out again, independently: test prompts, the saved student vs a fresh cut
    cfg = load_config(teacher_run, [])
    t_task, tok, _info = load_trained(cfg.run_dir)
    teacher = merged_lm(t_task.lm)
    student = load_trained(Path(result["student"]["path"]))[0].lm
    fresh = shallow_student(teacher, student_layers(None, 4))
    items = setup(cfg, reuse_data=True, threads=1, tokenizer=tok).task.encoded["test"]
    pad = tok.pad_token_id
    assert mean_kl(student, teacher, items, pad_id=pad) < 0.5 * mean_kl(fresh, teacher, items,
                                                                        pad_id=pad)  # fmt: skip


def test_the_student_folder_loads_evaluates_and_is_smaller(distilled, teacher_run):
    result, _output = distilled
    folder = Path(result["student"]["path"])
    assert folder.name == "student" and (folder.parent / "distill.json").is_file()
    model, _tok, info = load_trained(folder)
    assert info["kind"] == "full" and info["kept_layers"] == [0, 3]  # first and last
    assert info["distilled_from"] and info["student_layers"] == 2
    assert model.lm.config.num_hidden_layers == 2
    cfg = load_config(teacher_run, [])
    evaluated = evaluate_stage(cfg, folder)
    assert evaluated.metrics["accuracy"] == pytest.approx(
        result["student"]["test"]["metrics"]["accuracy"]
    )
    t, s = result["teacher"], result["student"]
    for side in (t, s):
        assert side["params"] > 0 and side["size_bytes"] > 0 and side["tokens_per_second"] > 0
        assert 0 <= side["test"]["metrics"]["accuracy"] <= 1
    assert s["params"] < t["params"] and s["size_bytes"] < t["size_bytes"]
    assert (t["layers"], s["layers"]) == (4, 2)
    steps = [row["step"] for row in result["training"]["curve"]]
    assert steps == list(range(cfg.train.log_every, 41, cfg.train.log_every))
    assert result["training"]["steps"] == 40 and result["training"]["stopped"] == "completed"
    # general examples are a share 0.1 of the training list: round(n_task x 0.1 / 0.9)
    n_task = result["data"]["task_examples"]
    assert result["data"]["general_examples"] == round(n_task * 0.1 / 0.9) > 0
    curve = result["training"]["curve"]
    for row in curve:  # alpha 1, T = 2: alpha T^2 KL is the whole loss
        assert row["loss"] == pytest.approx(4 * row["loss.kl"]) and row["loss.ce"] == 0, row


def test_a_named_student_with_the_same_tokenizer(teacher_run, tiny_model_dir, tmp_path):
    cfg = load_config(teacher_run, [f"distill.student={tiny_model_dir}", "distill.steps=3",
                                    "distill.general=0.0"])  # fmt: skip
    result = distill_stage(cfg, out=tmp_path)
    assert result["student"]["spec"] == str(tiny_model_dir)
    assert result["student"]["kept_layers"] is None and result["student"]["layers"] == 2
    assert result["data"]["general_examples"] == 0
    assert load_trained(tmp_path / "student")[2]["base"] == str(tiny_model_dir)


def test_a_student_with_another_vocabulary_is_a_config_error(teacher_run, tiny_model_dir,
                                                             tmp_path):  # fmt: skip
    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_model_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(other)
    cfg = load_config(teacher_run, [f"distill.student={other}"])
    with pytest.raises(ConfigError, match="tokenizer differs from the teacher's") as err:
        distill_stage(cfg, out=tmp_path / "out")
    assert "same tokenizer" in str(err.value) and not (tmp_path / "out").exists()
    teacher, student = (AutoModelForCausalLM.from_pretrained(p) for p in (tiny_model_dir, other))
    student.resize_token_embeddings(student.config.vocab_size + 8)
    same = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match="LM head has"):
        check_vocab(same, same, teacher, student)


def test_a_killed_distillation_resumes_to_the_uninterrupted_weights(teacher_run, tmp_path):
    """kill -9 after a checkpoint, `tunelab distill --resume`: the same student, bit for bit."""
    settings = ["distill.steps=24", "distill.eval_every=4", "distill.lr=3e-3",
                "train.keep_checkpoints=2", "train.early_stopping=null"]  # fmt: skip
    ref = distill_stage(load_config(teacher_run, settings), out=tmp_path / "ref")
    assert ref["training"]["steps"] == 24

    out = tmp_path / "killed"
    args = [str(teacher_run), *[f"--set={s}" for s in settings], f"--out={out}"]
    # the child imports this tunelab (not another checkout's) and the tests' conftest
    paths = [str(Path(__file__).parent), str(Path(tunelab.__file__).parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "distill", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kill_after_checkpoint(proc, out / "distill", 8, lambda: proc.send_signal(signal.SIGKILL))
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the distillation ended before it was killed"
    killed_at = int(str(read_pointer(out / "distill" / "checkpoints")["last"]).split("-")[1])
    assert 8 <= killed_at < 24 and not (out / "student").exists()

    result = runner.invoke(app, ["distill", *args, "--resume"])
    assert result.exit_code == 0, result.output
    resumed = json.loads((out / "distill.json").read_text())
    assert resumed["training"]["steps"] == 24
    a = load_file(tmp_path / "ref" / "student" / "model.safetensors")
    b = load_file(out / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # each step is logged once, though the steps after the checkpoint ran twice
    steps = [row["step"] for row in resumed["training"]["curve"]]
    assert steps == sorted(set(steps)) and steps[-1] == 24
