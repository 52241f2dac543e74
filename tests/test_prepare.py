"""The data stage as a whole: every drop accounted for, splits, leakage, mixtures, the card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import write_sentiment_jsonl
from tunelab.data.ingest import CleanSpec, TaskSpec
from tunelab.data.prepare import DataSpec, SplitSpec, prepare, read_prepared
from tunelab.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def _jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _reviews(n: int, start: int = 0) -> list[dict]:
    """Distinct rows: each names its own film and a number, so none near-duplicates another."""
    return [
        {"text": f"Film number {i} ({chr(97 + i % 26)}{i * 7919 % 1000}) was "
                 f"{['a delight', 'a bore', 'moving', 'flat'][i % 4]} to watch in {1950 + i}.",
         "label": "pos" if i % 4 in (0, 2) else "neg", "film": f"film{i // 3}"}
        for i in range(start, start + n)
    ]  # fmt: skip


LONG = (
    "A slow, patient film about a lighthouse keeper and his daughter, shot on grainy "
    "stock with long takes of the sea; the last act earns every quiet minute before it."
)


def _messy(tmp_path: Path) -> Path:
    rows: list = [*_reviews(39), {"text": LONG, "label": "pos"}]
    rows += [
        '{"text": "broken json',  # validation: invalid JSON
        {"text": "no label here"},  # validation: missing column
        {"text": "   ", "label": "pos"},  # validation: empty text
        {"text": rows[3]["text"].upper() + "  ", "label": rows[3]["label"]},  # exact dup
        {"text": LONG.replace("patient", "patiant"), "label": "pos"},  # near duplicate
        {"text": "Same words, two labels given here for this one.", "label": "pos"},
        {"text": "Same words, two labels given here for this one.", "label": "neg"},
        {"text": "Write to jane.doe@example.com about it, great film.", "label": "pos"},
    ]
    return _jsonl(tmp_path / "messy.jsonl", rows)


def test_every_dropped_row_is_accounted_for(tmp_path: Path) -> None:
    data = _messy(tmp_path)
    prep = prepare(DataSpec.single(str(data), caps={"test": 3}), tmp_path / "out")
    card = prep.card
    task = card["tasks"]["data"]
    assert task["rows_in"] == 48
    assert task["rows_in"] == task["kept"] + sum(task["dropped"].values())
    assert task["dropped"] == {
        "validation: invalid JSON": 1,
        "validation: missing column": 1,
        "validation: empty field": 1,
        "dedupe: exact duplicate": 1,
        "dedupe: near duplicate": 1,
        "dedupe: conflicting labels": 2,
        "sampling: split cap": task["dropped"]["sampling: split cap"],
    }
    cap = task["dropped"]["sampling: split cap"]
    assert card["splits"]["test"] == 3
    assert task["after_stage"] == {"read": 48, "validation": 45, "cleaning": 45, "dedupe": 41,
                                   "sampling": 41 - cap, "leakage": 41 - cap,
                                   "mixture": task["kept"]}  # fmt: skip
    rejected = [json.loads(x) for x in (tmp_path / "out/rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == sum(task["dropped"].values())
    by_reason = {r["reason"]: r for r in rejected}
    assert by_reason["invalid JSON"]["file"] == str(data)
    assert by_reason["invalid JSON"]["line"] == 41
    assert by_reason["missing column"]["field"] == "label"
    assert by_reason["exact duplicate"]["message"] == f"exact duplicate of {data}:4"
    assert by_reason["near duplicate"]["line"] == 45
    # personal data is redacted and counted
    texts = [m["content"] for s in SPLITS for ex in prep.splits[s] for m in ex.messages]
    assert not any("jane.doe@" in t for t in texts)
    assert any("[EMAIL]" in t for t in texts)
    assert card["pii"]["found"] == {"email": 1}
    md = (tmp_path / "out/data_card.md").read_text()
    assert "## Dropped rows by stage and reason" in md and "conflicting labels" in md


def test_strict_mode_stops_with_the_first_errors(tmp_path: Path) -> None:
    data = _messy(tmp_path)
    with pytest.raises(DataError, match="3 invalid rows") as info:
        prepare(DataSpec.single(str(data), validation="strict"), tmp_path / "out")
    text = str(info.value)
    assert f"{data}:41: -: invalid JSON" in text
    assert f"{data}:42: label: missing column" in text
    assert not (tmp_path / "out/prepared.json").exists()


def test_too_many_invalid_rows_stop_lenient_mode(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", [{"review": f"r{i}", "stars": 1} for i in range(20)])
    with pytest.raises(DataError, match="cannot tell the data format"):
        prepare(DataSpec.single(str(data)), tmp_path / "out")
    spec = DataSpec.single(str(data), format="classification")
    with pytest.raises(DataError, match=r"20 of 20 rows are invalid \(100%; missing column"):
        prepare(spec, tmp_path / "out")


def test_prepare_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", _reviews(40))
    a = prepare(DataSpec.single(str(data), split=SplitSpec(seed=3)), tmp_path / "a")
    b = prepare(DataSpec.single(str(data), split=SplitSpec(seed=3)), tmp_path / "b")
    c = prepare(DataSpec.single(str(data), split=SplitSpec(seed=4)), tmp_path / "c")
    assert a.hash == b.hash and a.hash != c.hash
    assert a.splits == b.splits
    again = read_prepared(tmp_path / "a")
    assert again.splits == a.splits and again.hash == a.hash and again.labels == a.labels


def test_labels_outside_the_declared_list_are_rejected(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", _reviews(40))
    prep = prepare(DataSpec.single(str(data), labels=("neg", "pos", "mixed")), tmp_path / "a")
    assert prep.labels == ["neg", "pos", "mixed"]
    prep = prepare(DataSpec.single(str(data), labels=("neg",), max_rejected=0.6), tmp_path / "b")
    assert prep.card["tasks"]["data"]["dropped"] == {"validation: unknown label": 20}
    with pytest.raises(DataError, match="share a label word"):
        prepare(DataSpec.single(str(data), label_words={"pos": "x", "neg": "x"}), tmp_path / "c")


def test_stratified_split_and_label_balance_warning(tmp_path: Path) -> None:
    rows = _reviews(60)
    for i, row in enumerate(rows):
        row["label"] = "rare" if i < 2 else "common"
    data = _jsonl(tmp_path / "d.jsonl", rows)
    card = prepare(DataSpec.single(str(data)), tmp_path / "out").card
    assert card["label_balance"]["train"]["rare"] >= 1
    assert any("label 'rare'" in w and "under 5%" in w for w in card["warnings"])


def test_group_split_keeps_a_group_in_one_split(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", _reviews(90))
    split = SplitSpec(method="group", group_by="film", val=0.2, test=0.2)
    prep = prepare(DataSpec.single(str(data), split=split), tmp_path / "out")
    rows = {json.dumps(r["text"]): r["film"] for r in _reviews(90)}
    films = [
        {rows[json.dumps(ex.messages[-1]["content"].split("Text: ")[1].split("\n")[0])]
         for ex in prep.splits[s]}
        for s in SPLITS
    ]  # fmt: skip
    assert not (films[0] & films[1]) and not (films[0] & films[2]) and not (films[1] & films[2])
    assert prep.card["split_method"].startswith("group by 'film'")
    assert "leakage check: exact (near duplicates were removed by dedupe" in prep.card[
        "split_method"]  # fmt: skip


def test_split_from_a_column(tmp_path: Path) -> None:
    rows = _reviews(30)
    for i, row in enumerate(rows):
        row["part"] = ["train", "train", "validation", "test", "TRAIN"][i % 5]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    split = SplitSpec(method="column", column="part")
    card = prepare(DataSpec.single(str(data), split=split), tmp_path / "out").card
    assert card["splits"] == {"train": 18, "val": 6, "test": 6}
    rows[0]["part"] = "holdout"
    _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="has the value 'holdout'"):
        prepare(DataSpec.single(str(data), split=split), tmp_path / "out")


def test_leakage_check_removes_duplicates_from_val_and_test(tmp_path: Path) -> None:
    rows = _reviews(30)
    data = _jsonl(tmp_path / "d.jsonl", rows + rows + rows)  # every row three times
    spec = DataSpec.single(str(data), clean=CleanSpec(dedupe=False))
    card = prepare(spec, tmp_path / "out").card
    task = card["tasks"]["data"]
    leaked = task["dropped"].get("leakage: exact duplicate across splits", 0)
    assert leaked > 0 and task["leakage_removed"] == {"exact": leaked}
    prep = read_prepared(tmp_path / "out")
    seen = [{ex.messages[-1]["content"] for ex in prep.splits[s]} for s in SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    off = DataSpec.single(str(data), clean=CleanSpec(dedupe=False), split=SplitSpec(leakage="off"))
    assert prepare(off, tmp_path / "off").card["tasks"]["data"]["leakage_removed"] == {}


def test_multi_task_mixture_with_weights_and_templates(tmp_path: Path) -> None:
    reviews = _jsonl(tmp_path / "r.jsonl", _reviews(40))
    qa = _jsonl(
        tmp_path / "q.jsonl",
        [{"question": f"What is {i} plus {i * 3}?", "answer": str(4 * i)} for i in range(40)],
    )
    tasks = (
        TaskSpec(name="sentiment", source=str(reviews), weight=3.0,
                 templates=("Review: {{ text }}\nSentiment?", "Is this positive? {{ text }}")),
        TaskSpec(name="sums", source=str(qa), weight=1.0),
    )  # fmt: skip
    prep = prepare(DataSpec(tasks=tasks, anonymize=None), tmp_path / "out")
    card = prep.card
    assert card["format"] == "mixed" and prep.labels is None
    train = card["splits"]["train"]
    distinct = [card["tasks"][name]["splits"]["train"] for name in ("sentiment", "sums")]
    assert train == sum(distinct) + card["repeated_in_mixture"]
    rows = [json.loads(x) for x in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    shares = Counter(r["task"] for r in rows)
    assert shares["sentiment"] == round(0.75 * train)
    assert set(card["templates"]["sentiment"]) == set(tasks[0].templates)
    for name, t in card["tasks"].items():
        assert t["rows_in"] == t["kept"] + sum(t["dropped"].values()), name


def test_token_length_filter_and_card(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tunelab.models.loading import tokenizer_from

    data = _jsonl(tmp_path / "d.jsonl", _reviews(30))
    tok = tokenizer_from(tiny_model_dir)
    lengths = sorted(len(tok(r["text"] + "\n" + r["label"], add_special_tokens=False)["input_ids"])
                     for r in _reviews(30))  # fmt: skip
    limit = lengths[20]
    spec = DataSpec.single(str(data), clean=CleanSpec(max_tokens=limit), max_rejected=0.5)
    card = prepare(spec, tmp_path / "out", tokenizer=tok).card
    too_long = sum(n > limit for n in lengths)
    assert card["tasks"]["data"]["dropped"] == {"cleaning: too long": too_long}
    summary = card["token_lengths"]["train"]
    assert summary["max"] <= limit and summary["rows"] == card["splits"]["train"]


def test_round_trip_keeps_unicode_line_separators(tmp_path: Path) -> None:
    """Regression: U+2028 / U+0085 inside text broke reading prepared data back (splitlines)."""
    rows = [
        f'{{"text": "odd\\u2028line {i} of {i * 37}\\u0085end", "label": "{"ab"[i % 2]}"}}'
        for i in range(12)
    ]
    data = _jsonl(tmp_path / "u.jsonl", rows)
    spec = DataSpec.single(str(data), clean=CleanSpec(steps=(), near_threshold=None))
    prep = prepare(spec, tmp_path / "out")
    assert read_prepared(tmp_path / "out").splits == prep.splits
    assert any("\u2028" in m["content"] for ex in prep.splits["train"] for m in ex.messages)


def test_files_detect_format_with_aliases(tmp_path: Path) -> None:
    for name, n in (("a.jsonl", 20), ("b.jsonl", 10)):
        _jsonl(tmp_path / name, [{"question": f"Q{name}{i} {i * 7}?", "answer": "A", "id": i}
                                 for i in range(n)])  # fmt: skip
    prep = prepare(DataSpec.single(str(tmp_path / "*.jsonl")), tmp_path / "out")
    assert prep.format == "instruction" and sum(prep.card["splits"].values()) == 30
    assert prep.card["format_note"] == (
        "format 'instruction' detected from question (as instruction), answer (as output): 30 rows"
    )


def test_recipe_settings_conflict(tmp_path: Path) -> None:
    spec = DataSpec.single("rotten_tomatoes", format="chat", columns={"text": "review"})
    with pytest.raises(ConfigError, match=r"data\.format") as info:
        prepare(spec, tmp_path / "out")
    assert "data.columns" in str(info.value)


def test_token_cache_skips_tokenisation_the_second_time(tmp_path, tiny_model_dir):
    from tunelab.data.token_cache import cached_encode
    from tunelab.data.tokenize import PromptFormatter, encode
    from tunelab.models.loading import tokenizer_from

    data = write_sentiment_jsonl(tmp_path / "s.jsonl", n=30)
    spec = DataSpec.single(str(data), clean=CleanSpec(dedupe=False))
    prep = prepare(spec, tmp_path / "out")
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


def test_saved_hf_dataset_dict_keeps_its_own_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = _reviews(30)
    parts = {"train": rows[:20], "validation": rows[20:25], "test": rows[25:]}
    saved = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in parts.items()})
    saved.save_to_disk(str(tmp_path / "saved"))
    split = SplitSpec(method="column", column="_split")
    prep = prepare(DataSpec.single(str(tmp_path / "saved"), split=split), tmp_path / "out")
    assert prep.card["splits"] == {"train": 20, "val": 5, "test": 5}
    assert all("[validation]" in ex.origin for ex in prep.splits["val"])


def test_chat_rows_with_bad_roles_name_the_message(tmp_path: Path) -> None:
    good = [
        {"messages": [{"role": "user", "content": f"Say {i} twice, please."},
                      {"role": "assistant", "content": f"{i} {i}"}]}
        for i in range(20)
    ]  # fmt: skip
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    data = _jsonl(tmp_path / "c.jsonl", [*good, bad])
    prep = prepare(DataSpec.single(str(data)), tmp_path / "out")
    assert prep.format == "chat"
    rejected = json.loads((tmp_path / "out/rejected.jsonl").read_text())
    assert rejected["line"] == 21 and rejected["field"] == "messages[1].role"
    assert rejected["reason"] == "invalid chat messages"


def test_rows_without_the_group_column_are_rejected(tmp_path: Path) -> None:
    rows = _reviews(40)
    del rows[7]["film"]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    split = SplitSpec(method="group", group_by="film")
    card = prepare(DataSpec.single(str(data), split=split), tmp_path / "out").card
    assert card["tasks"]["data"]["dropped"] == {"validation: missing split column": 1}
    recipe = DataSpec.single("chatterbot_qa", split=split, max_rejected=1.0, anonymize=None)
    with pytest.raises(DataError, match="no rows left"):
        prepare(recipe, tmp_path / "qa")
