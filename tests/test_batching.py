"""Batch order (deterministic, length-grouped), collation and tokenisation with loss masks."""

from __future__ import annotations

from tunelab.data.batching import collate, eval_batches, train_batches
from tunelab.data.tokenize import IGNORE, Encoded, PromptFormatter, encode
from tunelab.data.types import Example
from tunelab.models.loading import tokenizer_from


def test_train_batches_cover_every_index_once_and_are_deterministic():
    lengths = [(i * 37) % 50 + 1 for i in range(103)]
    a = train_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(103))
    assert a == train_batches(lengths, 8, seed=1, epoch=0)
    assert a != train_batches(lengths, 8, seed=1, epoch=1)


def test_length_grouping_reduces_padding():
    lengths = [(i * 37) % 50 + 1 for i in range(400)]
    grouped = train_batches(lengths, 8, seed=0, epoch=0)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in grouped)
    naive = [list(range(i, min(i + 8, 400))) for i in range(0, 400, 8)]
    padded_naive = sum(len(b) * max(lengths[i] for i in b) for b in naive)
    assert padded < 0.8 * padded_naive


def test_eval_batches_longest_first():
    batches = eval_batches([3, 9, 1, 7], 2)
    assert batches == [[1, 3], [0, 2]]


def test_collate_masks_prompt_and_padding():
    items = [Encoded([5, 6, 7, 8], prompt_len=2), Encoded([5, 9, 4], prompt_len=2)]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, IGNORE, 4, IGNORE]]


def test_encode_keeps_response_and_cuts_prompt_from_the_left(tiny_model_dir):
    tok = tokenizer_from(tiny_model_dir)
    fmt = PromptFormatter(tok, "auto")
    ex = Example(
        messages=({"role": "user", "content": "the film was very dull " * 20},),
        response="negative",
        label="neg",
        origin="x:1",
    )
    full = encode(tok, fmt, ex, max_length=1000, labels=["neg", "pos"])
    cut = encode(tok, fmt, ex, max_length=24, labels=["neg", "pos"])
    assert cut.length == 24
    assert cut.input_ids[cut.prompt_len :] == full.input_ids[full.prompt_len :]
    assert (
        cut.input_ids[: cut.prompt_len]
        == full.input_ids[full.prompt_len - cut.prompt_len : full.prompt_len]
    )
    assert full.class_index == 0
    # the response ends with EOS so the model learns to stop
    assert full.input_ids[-1] == tok.eos_token_id
    assert tok.decode(full.input_ids[full.prompt_len : -1]).strip() == "negative"


def test_micro_batches_respect_the_token_cap_and_keep_every_example():
    from tunelab.data.batching import micro_batches

    items = [Encoded(list(range(1, n + 1)), prompt_len=1) for n in (30, 5, 7, 12, 3, 28, 9)]
    for packing in (False, True):
        pieces = micro_batches(items, 0, max_tokens=40, packing=packing, row_tokens=32)
        assert len(pieces) > 1
        for p in pieces:  # a piece is within the cap unless it is a single row
            assert p["input_ids"].numel() <= 40 or p["input_ids"].shape[0] == 1
        real = sum(int((p["labels"] != -100).sum()) for p in pieces)
        # every response token is a target exactly once (packing ignores first tokens,
        # which are prompt tokens here anyway)
        assert real == sum(e.length - e.prompt_len for e in items)
    packed = micro_batches(items, 0, max_tokens=None, packing=True, row_tokens=32)
    assert len(packed) == 1 and packed[0]["input_ids"].shape[1] <= 32
    assert packed[0]["input_ids"].shape[0] < len(items)  # rows are shared
