"""The loss and label scoring are checked against plain transformers computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunelab.data.batching import collate
from tunelab.data.tokenize import Encoded
from tunelab.evaluation.scoring import label_logits
from tunelab.models.loss import batch_loss
from tunelab.models.nll import mean_loss
from tunelab.models.task_model import TaskModel, build_task_model


@pytest.fixture()
def lm(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _items():
    return [
        Encoded([3, 10, 11, 12, 20, 21], prompt_len=4),
        Encoded([3, 13, 22, 23], prompt_len=2),
        Encoded([3, 14, 15, 16, 17, 30, 31, 2], prompt_len=5),
    ]


def test_selected_position_loss_equals_transformers_loss(lm):
    """Reference: HF's own causal-LM loss with -100 labels, which builds all (B, T, V) logits."""
    batch = collate(_items(), pad_id=0)
    model = TaskModel(lm, "lm")
    loss_sum, n = batch_loss(model, batch)
    ref = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             labels=batch["labels"]).loss  # fmt: skip
    assert n == 2 + 2 + 3
    torch.testing.assert_close(loss_sum / n, ref, rtol=1e-5, atol=1e-6)


def test_mean_loss_is_token_weighted(lm):
    model = TaskModel(lm, "lm")
    items = _items()
    sums = [batch_loss(model, collate([e], 0)) for e in items]
    expected = sum(s.item() for s, _ in sums) / sum(n for _, n in sums)
    assert mean_loss(model, items, 0, batch_size=2, precision="fp32") == pytest.approx(
        expected, rel=1e-5
    )


def test_label_scoring_matches_a_per_example_forward(lm):
    """One batched pass over padded prompts gives the same scores as each prompt alone."""
    model = TaskModel(lm, "lm")
    items = _items()
    label_ids = [[40], [41], [42]]
    scores = label_logits(model, items, label_ids, pad_id=0, batch_size=3, precision="fp32")
    for row, e in enumerate(items):
        ids = torch.tensor([e.input_ids[: e.prompt_len]])
        logp = F.log_softmax(lm(input_ids=ids).logits[0, -1], dim=-1)
        torch.testing.assert_close(scores[row], logp[[40, 41, 42]], rtol=1e-4, atol=1e-5)


def test_multi_token_labels_sum_their_token_logprobs(lm):
    model = TaskModel(lm, "lm")
    items = _items()[:2]
    label_ids = [[40, 41], [42]]
    scores = label_logits(model, items, label_ids, pad_id=0, batch_size=4, precision="fp32")
    e = items[0]
    prompt = e.input_ids[: e.prompt_len]
    logp = F.log_softmax(lm(input_ids=torch.tensor([[*prompt, 40, 41]])).logits[0], dim=-1)
    expected = logp[len(prompt) - 1, 40] + logp[len(prompt), 41]
    assert scores[0, 0].item() == pytest.approx(expected.item(), abs=1e-4)


def test_classifier_head_starts_as_restricted_label_scoring(lm):
    """Initialised from the LM head rows, the classifier equals softmax over label logits."""
    items = _items()
    plain = label_logits(TaskModel(lm, "lm"), items, [[40], [41]], pad_id=0, batch_size=3,
                         precision="fp32")  # fmt: skip
    head = build_task_model(lm, kind="frozen", head="classifier", label_token_ids=[40, 41])
    scores = label_logits(head, items, [[40], [41]], pad_id=0, batch_size=3, precision="fp32")
    torch.testing.assert_close(scores.softmax(-1), plain.softmax(-1), rtol=1e-4, atol=1e-5)
    loss_sum, n = batch_loss(
        head, collate([Encoded(e.input_ids, e.prompt_len, 1) for e in items], 0)
    )
    assert n == 3 and math.isfinite(loss_sum.item())
    trainable = [name for name, p in head.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]


def test_chunked_cross_entropy_equals_plain_in_value_and_gradients():
    """Reference: F.cross_entropy over the full (N, V) logits, computed in one piece."""
    from tunelab.models.loss import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(37, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    plain = F.cross_entropy(head(h), t, reduction="sum")
    g_h, g_w = torch.autograd.grad(plain, [h, head.weight])
    chunked = chunked_cross_entropy(head, h, t, chunk=8)  # 5 chunks, the last one partial
    c_h, c_w = torch.autograd.grad(chunked, [h, head.weight])
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c_h, g_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_w, g_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(head, h, t, chunk=8), plain.detach())


def test_shared_prefix_cache_gives_the_same_label_scores(lm):
    """Templated prompts share a prefix that is encoded once; scores must not change."""
    from tunelab.evaluation import scoring

    prefix = list(range(3, 15))  # 12 shared tokens, above MIN_SHARED_PREFIX
    items = [
        Encoded(prefix + tail, len(prefix) + len(tail)) for tail in ([20, 21], [22], [23, 24, 25])
    ]
    assert scoring.shared_prefix_length(items) == 12
    with_cache = label_logits(TaskModel(lm, "lm"), items, [[40], [41]], pad_id=0, batch_size=2,
                              precision="fp32")  # fmt: skip
    for row, e in enumerate(items):
        logp = F.log_softmax(lm(input_ids=torch.tensor([e.input_ids])).logits[0, -1], dim=-1)
        torch.testing.assert_close(with_cache[row], logp[[40, 41]], rtol=1e-4, atol=1e-5)
    # a prompt that is all prefix keeps one token of its own
    assert scoring.shared_prefix_length([Encoded(prefix, 12), Encoded([*prefix, 30], 13)]) == 11


def test_packed_rows_give_the_unpacked_loss(lm):
    """Packed examples must not attend to each other: the summed loss and the number of
    target tokens equal those of the same examples one per row."""
    from tunelab.data.batching import collate_packed, pack

    items = [*_items(), Encoded([3, 18, 19, 26, 27, 28], prompt_len=3)]
    rows = pack([e.length for e in items], max_tokens=14)
    assert sorted(i for r in rows for i in r) == list(range(len(items)))
    assert len(rows) < len(items)  # something was actually packed
    packed = collate_packed([[items[i] for i in r] for r in rows], pad_id=0)
    model = TaskModel(lm, "lm")
    packed_sum, packed_n = batch_loss(model, packed)
    plain = [batch_loss(model, collate([e], 0)) for e in items]
    assert packed_n == sum(n for _, n in plain)
    torch.testing.assert_close(packed_sum, sum(s for s, _ in plain), rtol=1e-5, atol=1e-5)
    # without the position restarts the examples would see each other: the loss changes
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(
        packed["input_ids"])}  # fmt: skip
    leaky_sum, _ = batch_loss(model, leaky)
    assert not torch.allclose(leaky_sum, packed_sum, rtol=1e-4)


def test_example_terms_count_what_the_loss_sums():
    from tunelab.models.loss import example_terms, loss_terms

    items = [*_items(), Encoded([5, 6, 7], prompt_len=0)]  # no prompt: token 0 is no target
    for head in ("lm", "classifier"):
        for e in items:
            assert example_terms(e, head) == loss_terms(collate([e], 0), head)
