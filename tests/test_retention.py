"""The retention suite: disjoint general data, exact zero drift for the base, KL bounds,
the bootstrap and the retention score, the base cache, and user probes."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import NEGATIVE, POSITIVE
from tunelab.data.tokenize import Encoded
from tunelab.data.types import Example
from tunelab.forgetting.general import (
    _prose,
    chat_examples,
    general_prompts,
    general_training_examples,
    normalise_question,
    part_of,
    prose_texts,
    qa_examples,
)
from tunelab.forgetting.measure import (
    Measurement,
    base_key_parts,
    cached_base_measurement,
    coarse_kl,
    coarse_logprobs,
    measure,
    topk_logprobs,
)
from tunelab.forgetting.probes import SuiteSettings, general_suite, token_f1, user_probe
from tunelab.forgetting.report import compare, format_table
from tunelab.models.loading import load_base, load_tokenizer
from tunelab.models.task_model import TaskModel

SETTINGS = SuiteSettings(max_examples=6, max_length=48, max_new_tokens=6, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model gains nothing from threads, and they stall when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    return TaskModel(load_base(str(tiny_model_dir)), "lm")


@pytest.fixture(scope="module")
def suite(tok):
    return general_suite(tok, SETTINGS)


@pytest.fixture(scope="module")
def base_measurement(base_model, tok, suite):
    return measure(base_model, tok, suite, SETTINGS, base=None, name="tiny")


# --- general data ----------------------------------------------------------------------


def _unit(origin: str) -> str:
    """The source unit of an origin: chit-chat conversation or pydoc topic."""
    return origin.split("#")[0]


def test_probe_and_train_parts_share_no_source_unit():
    probe_qa, train_qa = qa_examples("probe"), qa_examples("train")
    questions = [
        {normalise_question(ex.messages[-1]["content"]) for ex in part}
        for part in (probe_qa, train_qa)
    ]
    assert probe_qa and train_qa and not questions[0] & questions[1]
    conversations = [
        {
            _unit(ex.origin)
            for ex in chat_examples(part) + general_prompts(part)
            if ex.origin.startswith("chitchat:")
        }
        for part in ("probe", "train")
    ]
    assert conversations[0] and conversations[1] and not conversations[0] & conversations[1]
    assert set(prose_texts("probe")).isdisjoint(prose_texts("train"))
    topics = [{_unit(o) for o, _ in _prose(part)} for part in ("probe", "train")]
    assert topics[0] and topics[1] and not topics[0] & topics[1]
    # training examples come from the train part only
    train_units = conversations[1] | questions[1]
    for ex in general_training_examples(60, seed=0):
        if ex.origin.startswith("chitchat:"):
            assert _unit(ex.origin) in train_units
        elif ex.origin.startswith("chatterbot:"):
            assert normalise_question(ex.messages[-1]["content"]) in train_units
        else:
            assert ex.raw and _unit(ex.origin) in topics[1]


def test_part_assignment_is_a_fixed_hash():
    # expected parts from BLAKE2b-64 of the unit (hex digest computed once, by hand:
    # 22b7e32b... / 2^64 = 0.136 < 0.3, e3ccbb4a... / 2^64 = 0.89)
    assert part_of("chatterbot:what is ai?") == "probe"
    assert part_of("pydoc:assert") == "train"
    probe_share = np.mean([part_of(f"unit:{i}") == "probe" for i in range(4000)])
    assert abs(probe_share - 0.3) < 0.03


def test_general_data_is_deterministic_and_well_formed():
    assert qa_examples("probe") == qa_examples("probe")
    first, again = general_training_examples(30, seed=3), general_training_examples(30, seed=3)
    assert first == again and len(first) == 30
    assert general_training_examples(30, seed=4) != first
    kinds = Counter(ex.origin.split(":")[0] for ex in first)
    assert kinds == {"chatterbot": 10, "chitchat": 10, "pydoc": 10}
    for ex in chat_examples("probe")[:200]:
        assert ex.messages[-1]["role"] == "user" and 1 <= len(ex.messages) <= 2 and ex.response
    for ex in general_prompts("probe"):
        assert ex.response == "" and len(ex.messages) == 1
    assert all(len(p) >= 200 for p in prose_texts("probe"))


# --- the base against itself and a perturbed model ------------------------------------


def test_base_against_itself_loses_nothing(base_model, tok, suite, base_measurement):
    again = measure(base_model, tok, suite, SETTINGS, base=base_measurement, name="tiny")
    assert again.scores["drift_kl"] == [0.0] * len(suite[-1].items)  # exactly, not approx
    assert again.scores["instruct_rougeL"] == [1.0] * len(suite[-2].items)
    report = compare(base_measurement, again, suite, n_boot=200)
    assert report["retention_score"] == 1.0 and report["retention_ci95"] == [1.0, 1.0]
    for name, row in report["probes"].items():
        assert row["delta"] == 0.0 and row["ci95"] == [0.0, 0.0], name
        assert row["retention"] == 1.0 and not row["significant"], name
        assert row["n_items"] == SETTINGS.max_examples
    json.dumps(report, allow_nan=False)
    assert len(format_table(report)) == len(suite) + 2


def test_perturbed_model_drifts(base_model, tok, suite, base_measurement):
    noisy = copy.deepcopy(base_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    tuned = measure(noisy, tok, suite, SETTINGS, base=base_measurement, name="noisy")
    assert min(tuned.scores["drift_kl"]) > 0
    report = compare(base_measurement, tuned, suite, n_boot=200)
    assert report["probes"]["drift_kl"]["retention"] < 1.0
    assert report["retention_score"] < 1.0
    lo, hi = report["retention_ci95"]
    assert lo <= report["retention_score"] <= hi


def test_item_nll_matches_transformers_loss(base_model, tok, suite, base_measurement):
    """Reference: HF's causal-LM loss of each item alone (mean over its labelled tokens)."""
    probe = suite[0]
    for item, score in zip(probe.items, base_measurement.scores[probe.name], strict=True):
        ids = torch.tensor([item.input_ids])
        labels = torch.tensor([item.labels])
        ref = base_model.lm(input_ids=ids, labels=labels).loss.item()
        assert score == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_drift_kl_matches_a_full_vocabulary_computation(base_model, tok, suite, base_measurement):
    """With top-k covering the vocabulary, the stored coarse KL is the exact KL, checked
    against full (T, V) logits of both models on the base's answers."""
    probe = suite[-1]
    settings = SuiteSettings(**{**SETTINGS.__dict__, "kl_top_k": 10_000})
    base = measure(base_model, tok, [probe], settings, base=None)
    noisy = copy.deepcopy(base_model)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tuned = measure(noisy, tok, [probe], settings, base=base)
    eos = tok.eos_token
    for item, text, score in zip(
        probe.items, base.outputs[probe.name], tuned.scores[probe.name], strict=True
    ):
        answer = tok(text + eos, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([item.input_ids[: item.prompt_len] + answer])
        with torch.no_grad():
            lp = F.log_softmax(base_model.lm(input_ids=ids).logits[0], -1)  # (T, V)
            lq = F.log_softmax(noisy.lm(input_ids=ids).logits[0], -1)
        rows = slice(item.prompt_len - 1, ids.shape[1] - 1)
        full = (lp[rows].exp() * (lp[rows] - lq[rows])).sum(-1).mean().item()
        assert score == pytest.approx(full, rel=1e-4, abs=1e-6)


# --- numerics on hand-made inputs ------------------------------------------------------


def test_coarse_kl_is_exact_at_full_k_and_a_lower_bound_below():
    torch.manual_seed(0)
    lp = F.log_softmax(3 * torch.randn(50, 12), dim=-1)
    lq = F.log_softmax(3 * torch.randn(50, 12), dim=-1)
    full = (lp.exp() * (lp - lq)).sum(-1)  # the definition, over all 12 outcomes
    for k in (12, 20):
        idx, p = topk_logprobs(lp, k)
        assert idx.shape == (50, 12) and torch.all(torch.isinf(p[:, -1]))
        torch.testing.assert_close(coarse_kl(p, coarse_logprobs(lq, idx)), full)
    for k in (1, 3, 8):
        idx, p = topk_logprobs(lp, k)
        coarse = coarse_kl(p, coarse_logprobs(lq, idx))
        assert torch.all(coarse <= full + 1e-6) and torch.all(coarse >= 0)
        torch.testing.assert_close(p.exp().sum(-1), torch.ones(50))
    idx, p = topk_logprobs(lp, 4)
    assert torch.equal(coarse_kl(p, coarse_logprobs(lp, idx)), torch.zeros(50))


def _pair(metric_scores: dict[str, tuple[list[float], list[float]]]):
    from tunelab.forgetting.probes import Probe

    # names are "<metric>:<anything>"
    probes = [
        Probe(n, n.split(":")[0], [Encoded([1, 2], 1)] * len(b))  # type: ignore[arg-type]
        for n, (b, _) in metric_scores.items()
    ]
    base = Measurement("base", {n: b for n, (b, _) in metric_scores.items()})
    tuned = Measurement("tuned", {n: t for n, (_, t) in metric_scores.items()})
    return base, tuned, probes


def test_retention_score_formula_on_hand_made_measurements():
    base, tuned, probes = _pair(
        {
            "nll:a": ([1.0, 2.0], [1.5, 2.5]),  # r = exp(1.5 - 2.0) = exp(-0.5)
            "match_f1:a": ([0.5, 0.5], [0.25, 0.25]),  # r = 0.25 / 0.5 = 0.5
            "kl:a": ([0.0, 0.0], [0.1, 0.3]),  # r = exp(-0.2)
            "agreement:a": ([1.0, 1.0], [0.7, 0.9]),  # r = 0.8
            "accuracy:a": ([0.0, 1.0], [1.0, 1.0]),  # r = 2, capped at 1
            "rougeL:a": ([0.0, 0.0], [0.0, 0.0]),  # 0/0: r = 1
            "exact_match:a": ([0.0, 0.0], [1.0, 0.0]),  # x/0: no ratio, left out
        }
    )
    report = compare(base, tuned, probes, n_boot=300)
    rows = report["probes"]
    assert rows["nll:a"]["retention"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert rows["nll:a"]["base_ppl"] == pytest.approx(math.exp(1.5), abs=1e-5)
    assert rows["match_f1:a"]["retention"] == 0.5
    assert rows["kl:a"]["retention"] == pytest.approx(math.exp(-0.2), abs=1e-6)
    assert rows["agreement:a"]["retention"] == pytest.approx(0.8)
    assert rows["accuracy:a"]["retention"] == 2.0
    assert rows["rougeL:a"]["retention"] == 1.0
    assert rows["exact_match:a"]["retention"] is None and len(report["notes"]) == 1
    expected = (math.exp(-0.5) + 0.5 + math.exp(-0.2) + 0.8 + 1.0 + 1.0) / 6
    assert report["retention_score"] == pytest.approx(expected, abs=1e-6)
    assert report["n_probes_in_score"] == 6
    assert not rows["nll:a"]["higher_is_better"] and rows["accuracy:a"]["higher_is_better"]
    json.dumps(report, allow_nan=False)


def test_paired_bootstrap_finds_a_constant_shift():
    rng = np.random.default_rng(0)
    b = rng.normal(3.0, 1.0, 40)
    base, tuned, probes = _pair({"nll:x": (b.tolist(), (b + 0.2).tolist())})
    row = compare(base, tuned, probes)["probes"]["nll:x"]
    # paired: every replicate's delta is the shift itself, though items vary by ±1
    assert row["ci95"] == pytest.approx([0.2, 0.2], abs=1e-6) and row["significant"]
    assert row["delta"] == pytest.approx(0.2, abs=1e-6)
    noisy = b + 0.2 + rng.normal(0, 0.05, 40)
    base, tuned, probes = _pair({"nll:x": (b.tolist(), noisy.tolist())})
    row = compare(base, tuned, probes, seed=1)["probes"]["nll:x"]
    lo, hi = row["ci95"]
    assert 0 < lo < 0.2 < hi and row["significant"]


def test_token_f1_follows_squad():
    # "the cat sat" → [cat, sat]; "A cat sat down." → [cat, sat, down]: P=1, R=2/3, F1=0.8
    assert token_f1("the cat sat", "A cat sat down.") == pytest.approx(0.8)
    assert token_f1("Paris!", "paris") == 1.0 and token_f1("", "") == 1.0
    assert token_f1("dog", "cat") == 0.0


# --- cache and user probes --------------------------------------------------------------


def test_base_cache_round_trips_and_keys_miss(tmp_path, monkeypatch, tok, suite, base_measurement):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    parts = base_key_parts("tiny-model", suite, SETTINGS, tok)
    calls = []

    def compute():
        calls.append(1)
        return base_measurement

    first, cached = cached_base_measurement(parts, compute)
    assert not cached and first is base_measurement
    again, cached = cached_base_measurement(parts, compute)
    assert cached and len(calls) == 1
    assert again.scores == base_measurement.scores and again.outputs == base_measurement.outputs
    assert again.model == "tiny" and again.seconds == base_measurement.seconds
    for name, tensors in base_measurement.topk.items():
        for mine, theirs in zip(tensors, again.topk[name], strict=True):
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    other = base_key_parts("tiny-model", suite, SuiteSettings(seed=1), tok)
    _, cached = cached_base_measurement(other, compute)
    assert not cached and len(calls) == 2


def test_user_probe_accuracy_matches_full_logits(base_model, tok):
    rng = np.random.default_rng(0)
    examples = []
    for i in range(10):
        words = POSITIVE if i % 2 == 0 else NEGATIVE
        text = " ".join(rng.choice(words, 3).tolist())
        label = "pos" if i % 2 == 0 else "neg"
        examples.append(Example(({"role": "user", "content": text},), label, label, f"t:{i}"))
    settings = SuiteSettings(max_examples=8, max_length=48, batch_size=3)
    probe = user_probe(
        "sentiment",
        examples,
        "accuracy",
        tok,
        settings,
        labels=["neg", "pos"],
        label_words=["negative", "positive"],
    )
    scores = measure(base_model, tok, [probe], settings, base=None).scores["sentiment"]
    assert len(scores) == 8 and set(scores) <= {0.0, 1.0}
    # reference: each prompt alone through HF, comparing the label words' first tokens
    first = [ids[0] for ids in probe.label_ids or []]
    for item, score in zip(probe.items, scores, strict=True):
        with torch.no_grad():
            logits = base_model.lm(input_ids=torch.tensor([item.input_ids[: item.prompt_len]]))
        predicted = int(logits.logits[0, -1, first].argmax())
        assert score == float(predicted == item.class_index)
