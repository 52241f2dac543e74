"""Generation tasks end to end, batched decoding, bf16 autocast, model resolution errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.data.tokenize import Encoded
from tunelab.errors import ModelError
from tunelab.evaluation.scoring import generate
from tunelab.models.loading import resolve_base, tokenizer_from
from tunelab.models.loss import batch_loss
from tunelab.models.nll import mean_loss
from tunelab.models.task_model import TaskModel

runner = CliRunner()


def test_batched_greedy_decoding_equals_one_at_a_time(tiny_model_dir):
    """Left padding with an attention mask must not change what greedy decoding produces."""
    tok = tokenizer_from(tiny_model_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = TaskModel(lm, "lm")
    texts = ["the film", "a very dull and boring story was told", "great"]
    items = [Encoded(tok(t)["input_ids"], len(tok(t)["input_ids"])) for t in texts]
    batched = generate(model, tok, items, max_new_tokens=6, batch_size=3, precision="fp32")
    single = [generate(model, tok, [e], max_new_tokens=6, batch_size=1, precision="fp32")[0]
              for e in items]  # fmt: skip
    assert batched == single
    assert any(batched)  # the random model emits some non-special tokens


def test_bf16_autocast_loss_tracks_fp32(tiny_model_dir):
    """bf16 autocast keeps fp32 weights; its loss stays within bf16 precision of fp32's."""
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = TaskModel(lm, "lm")
    items = [Encoded(list(range(3, 3 + n)), n // 2) for n in (12, 20, 31)]
    fp32 = mean_loss(model, items, 0, batch_size=3, precision="fp32")
    bf16 = mean_loss(model, items, 0, batch_size=3, precision="bf16")
    # bf16 keeps 8 mantissa bits: relative error ~2^-8 per op; 2% on a loss of ~5 is generous
    assert bf16 == pytest.approx(fp32, rel=0.02)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = batch_loss(model, {"input_ids": torch.tensor([[3, 4, 5, 6]]),
                                     "attention_mask": torch.ones(1, 4, dtype=torch.long),
                                     "labels": torch.tensor([[-100, -100, 5, 6]]),
                                     "prompt_len": torch.tensor([2]),
                                     "class_index": torch.tensor([-1])})  # fmt: skip
    assert loss.dtype == torch.float32  # CE is computed in fp32 from upcast logits


def test_instruction_data_is_scored_by_generation(tmp_path, tiny_model_dir):
    data = tmp_path / "qa.jsonl"
    with open(data, "w") as fh:
        for i in range(30):
            fh.write(json.dumps({"question": f"the film {i % 3}", "answer": "great fun"}) + "\n")
    cfg = tiny_config(tiny_model_dir, data, tmp_path / "runs",
                      data={"template": None, "label_words": {}},
                      eval={"metrics": ["exact_match", "bleu", "rouge", "perplexity"],
                            "max_new_tokens": 4})  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert results["data"]["format"] == "instruction"
    assert "instruction" in results["data"]["format_note"]
    metrics = results["tuned"]["metrics"]
    assert set(metrics) >= {"exact_match", "bleu", "rouge1", "rouge2", "rougeL", "perplexity"}
    assert metrics["perplexity"] > 1.0
    # training lowers the response perplexity of this repetitive data
    assert metrics["perplexity"] < results["base"]["metrics"]["perplexity"]


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tunelab.models.loading import load_tokenizer

    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        load_tokenizer("nobody-here/no-such-model-xyz")


def test_unknown_model_base_lists_aliases(tmp_path):
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        resolve_base("not a model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_base(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_base(str(tmp_path / "missing.gguf"))
