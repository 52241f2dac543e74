"""The data stage as a whole: split sizes, caps, the data card, and the on-disk round trip."""

from __future__ import annotations

import pytest

from conftest import write_sentiment_jsonl
from tunelab.data.prepare import DataSpec, prepare, read_prepared, write_prepared
from tunelab.errors import DataError


def test_card_counts_add_up_and_splits_are_disjoint(tmp_path):
    data = write_sentiment_jsonl(tmp_path / "s.jsonl", n=101)
    prep = prepare(DataSpec(source=str(data), caps={"test": 5}, label_words={"pos": "positive"}))
    card = prep.card
    assert card["rows_loaded"] == 101
    kept = sum(card["splits"].values())
    assert kept + sum(card["dropped_by_split_caps"].values()) + card["dropped_by_max_rows"] == 101
    assert card["splits"]["test"] == 5
    origins = [{ex.origin for ex in prep.splits[s]} for s in ("train", "val", "test")]
    assert not (origins[0] & origins[1]) and not (origins[0] & origins[2])
    assert not (origins[1] & origins[2])
    assert prep.labels == ["neg", "pos"]
    assert prep.label_words == {"neg": "neg", "pos": "positive"}
    # stratified: both labels in every split
    for name in ("train", "val", "test"):
        assert set(card["label_balance"][name]) == {"neg", "pos"}


def test_prepare_is_deterministic_and_round_trips(tmp_path):
    data = write_sentiment_jsonl(tmp_path / "s.jsonl", n=40)
    a = prepare(DataSpec(source=str(data), seed=3))
    b = prepare(DataSpec(source=str(data), seed=3))
    c = prepare(DataSpec(source=str(data), seed=4))
    assert a.hash == b.hash and a.hash != c.hash
    write_prepared(a, tmp_path / "data")
    again = read_prepared(tmp_path / "data")
    assert again.splits == a.splits and again.hash == a.hash and again.labels == a.labels


def test_labels_outside_the_declared_list_are_an_error(tmp_path):
    data = write_sentiment_jsonl(tmp_path / "s.jsonl", n=10)
    with pytest.raises(DataError, match=r"labels \['pos'\] occur in the data"):
        prepare(DataSpec(source=str(data), labels=["neg"]))
    with pytest.raises(DataError, match="share a label word"):
        prepare(DataSpec(source=str(data), label_words={"pos": "x", "neg": "x"}))


def test_round_trip_keeps_unicode_line_separators(tmp_path):
    """Regression: U+2028 / U+0085 inside text broke reading prepared data back (splitlines)."""
    data = tmp_path / "u.jsonl"
    rows = [
        f'{{"text": "odd\\u2028line {i}\\u0085end", "label": "{"ab"[i % 2]}"}}' for i in range(12)
    ]
    data.write_text("\n".join(rows) + "\n")
    prep = prepare(DataSpec(source=str(data)))
    write_prepared(prep, tmp_path / "data")
    assert read_prepared(tmp_path / "data").splits == prep.splits


def test_token_cache_skips_tokenisation_the_second_time(tmp_path, tiny_model_dir):
    from tunelab.data.token_cache import cached_encode
    from tunelab.data.tokenize import PromptFormatter, encode
    from tunelab.models.loading import tokenizer_from

    data = write_sentiment_jsonl(tmp_path / "s.jsonl", n=30)
    prep = prepare(DataSpec(source=str(data)))
    tok = tokenizer_from(tiny_model_dir)
    fmt = PromptFormatter(tok)
    calls = {"n": 0}

    def encode_one(ex):
        calls["n"] += 1
        return encode(tok, fmt, ex, max_length=64, labels=prep.labels)

    first, hit1 = cached_encode(prep.splits, encode_one, key_parts=["a"], folder=tmp_path / "c")
    n_first = calls["n"]
    second, hit2 = cached_encode(prep.splits, encode_one, key_parts=["a"], folder=tmp_path / "c")
    assert (hit1, hit2) == (False, True)
    assert n_first == 30 and calls["n"] == 30  # the second call encoded nothing
    assert second == first
    _, hit3 = cached_encode(prep.splits, encode_one, key_parts=["b"], folder=tmp_path / "c")
    assert not hit3  # another key (e.g. another tokenizer or max_length) re-encodes
