"""The feedback store (round trip, errors, WAL, threads, a killed writer), its export as
training data, and ``tunelab feedback``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tunelab.cli.feedback import app as feedback_app
from tunelab.serving.feedback_export import export_feedback
from tunelab.serving.store import (
    FeedbackError,
    FeedbackStore,
    InvalidFeedback,
    UnknownCompletion,
    normalise_rating,
    resolve_url,
)

# values tests/test_pii.py shows the detector finds
EMAIL = "john.doe@example.co.uk"
PHONE = "+44 20 7946 0958"


def _chat(
    store: FeedbackStore,
    id: str,
    question: str,
    outputs: list[str],
    *,
    model: str = "tiny",
    system: str | None = None,
) -> None:
    prompt = [{"role": "system", "content": system}] if system else []
    prompt.append({"role": "user", "content": question})
    store.log_completion(
        id=id, model=model, endpoint="chat", prompt=prompt, outputs=outputs,
        params={"temperature": 0.7, "n": len(outputs), "max_tokens": 64, "seed": 1},
        usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        created=time.time(), latency_ms=12.5,
    )  # fmt: skip


def _completion(store: FeedbackStore, id: str, prompt: str, output: str) -> None:
    store.log_completion(
        id=id, model="tiny", endpoint="completion", prompt=prompt, outputs=[output],
        params={"temperature": 0.0, "n": 1}, usage={"prompt_tokens": 3},
        created=time.time(), latency_ms=3.0,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


# --- round trip and errors -----------------------------------------------------------


def test_round_trip_list_and_stats(store: FeedbackStore) -> None:
    _chat(store, "chatcmpl-a", "What is 2+2?", ["4", "5"], model="m1")
    _completion(store, "cmpl-b", "The capital of France is", " Paris")
    _chat(store, "chatcmpl-c", "Say hi", ["hi"], model="m1")
    _chat(store, "chatcmpl-d", "Nothing rated", ["ok"], model="m2")

    up = store.add_feedback("chatcmpl-a", rating="up")
    down = store.add_feedback("chatcmpl-a", rating="down", choice=1, correction="4",
                              comment="off by one")  # fmt: skip
    assert up["rating"] == "up" and up["rating_value"] == 1.0 and up["choice"] == 0
    assert set(up) == {"id", "completion_id", "choice", "rating", "rating_value",
                       "correction", "comment", "created"}  # fmt: skip
    assert down["rating_value"] == 0.0 and down["correction"] == "4"
    assert down["comment"] == "off by one" and down["id"] > up["id"]
    for k in (1, 2, 3, 4, 5):
        row = store.add_feedback("cmpl-b", rating=k)
        assert row["rating"] == k and row["rating_value"] == (k - 1) / 4
    store.add_feedback("chatcmpl-c", rating=2)
    store.add_feedback("chatcmpl-c", rating=4)  # the latest rating of an answer counts

    got = store.get_completion("chatcmpl-a")
    assert got is not None and got["outputs"] == ["4", "5"] and got["endpoint"] == "chat"
    assert got["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert got["params"]["n"] == 2 and got["usage"]["total_tokens"] == 12
    assert [f["id"] for f in got["feedback"]] == [up["id"], down["id"]]
    assert store.get_completion("nope") is None

    assert [r["id"] for r in store.list()] == ["chatcmpl-d", "chatcmpl-c", "cmpl-b",
                                              "chatcmpl-a"]  # fmt: skip
    assert [r["id"] for r in store.list(limit=2)] == ["chatcmpl-d", "chatcmpl-c"]
    assert [r["id"] for r in store.list(with_feedback=False)] == ["chatcmpl-d"]
    assert len(store.list(with_feedback=True)) == 3

    s = store.stats()
    # answers (latest rating): a/0 up=1, a/1 down=0, b 5 -> 1, c 4 -> 0.75
    assert s["completions"] == 4 and s["with_feedback"] == 3
    assert s["feedback_rows"] == 2 + 5 + 2 and s["rated_answers"] == 4
    assert s["up_share"] == 3 / 4 and s["down_share"] == 1 / 4
    assert s["mean_rating_value"] == pytest.approx((1 + 0 + 1 + 0.75) / 4)
    assert s["corrections"] == 1
    assert s["by_model"]["m1"] == {
        "completions": 2, "with_feedback": 2, "rated_answers": 3, "up_share": 2 / 3,
        "down_share": 1 / 3, "mean_rating_value": pytest.approx(1.75 / 3), "corrections": 1,
    }  # fmt: skip
    assert s["by_model"]["m2"]["rated_answers"] == 0
    assert s["by_model"]["m2"]["mean_rating_value"] is None


@pytest.mark.parametrize(
    ("rating", "expected"),
    # the normalisation (k - 1) / 4 by hand: 1 -> 0, 2 -> .25, 3 -> .5, 4 -> .75, 5 -> 1
    [("up", ("up", 1.0)), ("DOWN", ("down", 0.0)), (1, ("1", 0.0)), (2, ("2", 0.25)),
     (3, ("3", 0.5)), ("4", ("4", 0.75)), (5.0, ("5", 1.0))],
)  # fmt: skip
def test_normalise_rating(rating: Any, expected: tuple[str, float]) -> None:
    assert normalise_rating(rating) == expected


def test_unknown_completion(store: FeedbackStore) -> None:
    with pytest.raises(UnknownCompletion, match="chatcmpl-missing") as info:
        store.add_feedback("chatcmpl-missing", rating="up")
    assert info.value.hint


@pytest.mark.parametrize("rating", [0, 6, "meh", 2.5, True, None, -1])
def test_bad_rating(store: FeedbackStore, rating: Any) -> None:
    _chat(store, "c", "q", ["a"])
    with pytest.raises(InvalidFeedback, match="rating") as info:
        store.add_feedback("c", rating=rating)
    assert info.value.hint
    assert store.get_completion("c")["feedback"] == []  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"choice": 2}, "choice must be an integer from 0 to 1"), ({"choice": -1}, "choice"),
     ({"correction": ""}, "correction"), ({"correction": "  \n"}, "correction")],
)  # fmt: skip
def test_bad_choice_or_correction(store: FeedbackStore, kwargs: dict, match: str) -> None:
    _chat(store, "c", "q", ["a", "b"])
    with pytest.raises(InvalidFeedback, match=match):
        store.add_feedback("c", rating="up", **kwargs)
    assert store.stats()["feedback_rows"] == 0


def test_duplicate_completion_id_and_bad_url(store: FeedbackStore) -> None:
    _chat(store, "c", "q", ["a"])
    with pytest.raises(FeedbackError, match="already logged"):
        _chat(store, "c", "q", ["a"])
    with pytest.raises(FeedbackError, match="endpoint"):
        store.log_completion(id="x", model="m", endpoint="embeddings", prompt="p", outputs=["o"],
                             params={}, usage={}, created=0, latency_ms=0)  # fmt: skip
    with pytest.raises(FeedbackError, match="unknown database kind"):
        FeedbackStore("nodb://")


def test_plain_path_means_sqlite_and_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "deep" / "feedback.db"
    assert resolve_url(str(path)) == f"sqlite:///{path}"
    with FeedbackStore(str(path)) as s:
        _chat(s, "c", "q", ["a"])
    with FeedbackStore(str(path)) as s:  # reopening finds the row and the tables
        assert s.get_completion("c") is not None


def test_sqlite_runs_in_wal_mode(store: FeedbackStore) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


# --- concurrency and crash safety ----------------------------------------------------


def test_eight_threads_write_at_once(store: FeedbackStore) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(50):
                cid = f"chatcmpl-{t}-{i}"
                _chat(store, cid, f"thread {t} question {i}", ["a", "b"])
                store.add_feedback(cid, rating=1 + (i % 5), choice=i % 2)
        except BaseException as e:  # collected: an error in a thread must fail the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert errors == []
    s = store.stats()
    assert s["completions"] == 400 and s["feedback_rows"] == 400 and s["rated_answers"] == 400
    ids = {r["id"] for r in store.list(limit=None)}
    assert ids == {f"chatcmpl-{t}-{i}" for t in range(8) for i in range(50)}


CHILD = """
import sys, time
from tunelab.serving.store import FeedbackStore
store = FeedbackStore(sys.argv[1])
run = sys.argv[2]
i = 0
while True:
    cid = f"chatcmpl-{run}-{i}"
    store.log_completion(id=cid, model="m", endpoint="chat",
                         prompt=[{"role": "user", "content": f"question {i}"}],
                         outputs=[f"answer {i}" * 20], params={"n": 1}, usage={},
                         created=time.time(), latency_ms=1.0)
    row = store.add_feedback(cid, rating=1 + i % 5, correction=f"better {i}" * 20)
    print(cid, row["id"], flush=True)
    i += 1
"""


def _kill_writer(db: Path, run: int, acks: int = 300, seconds: float = 20.0) -> list[str]:
    """Start a writer, read what it acknowledges until ``acks`` lines or ``seconds``,
    SIGKILL it mid-stream and return every fully read line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith("\n"):
                lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + seconds
    while len(lines) < acks and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return list(lines)


def test_killed_writer_loses_no_acknowledged_row(tmp_path: Path) -> None:
    db = tmp_path / "feedback.db"
    acked: list[str] = []
    for run in range(3):  # each run also recovers the WAL the previous kill left
        got = _kill_writer(db, run)
        assert len(got) >= 20, f"the writer acknowledged only {len(got)} rows"
        acked += got
    con = sqlite3.connect(db)  # the plain sqlite3 module, independent of the store
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        stored_feedback = {r[0] for r in con.execute("SELECT id FROM feedback")}
        stored_completions = {r[0] for r in con.execute("SELECT id FROM completions")}
    finally:
        con.close()
    pairs = [line.split() for line in acked]
    assert {cid for cid, _ in pairs} <= stored_completions
    assert {int(fid) for _, fid in pairs} <= stored_feedback
    # at most the one row per run committed after its last acknowledgement was printed
    assert len(stored_feedback) - len(pairs) <= 3
    print(f"crash test: {len(pairs)} rows acknowledged over 3 kills, "
          f"{len(stored_feedback)} in the database, none lost")  # fmt: skip


# --- export --------------------------------------------------------------------------


def _feedback_db(store: FeedbackStore) -> None:
    """One completion for each export rule; the expected outcome is in each comment."""
    # down + correction: an example from the correction and a preference pair
    _chat(store, "c-corr", f"Mail {EMAIL} or call {PHONE} about my refund.",
          ["I cannot help."], system="You are a support agent.")  # fmt: skip
    store.add_feedback("c-corr", rating="down", correction="Refunds take 5 days; we will mail you.")
    # rated 5: an example of the model's own output
    _chat(store, "c-good", "Name a primary colour.", ["Red."])
    store.add_feedback("c-good", rating=5)
    # rated 3 (0.5 < 0.75), no correction: skipped
    _chat(store, "c-mid", "Tell me a joke.", ["No."])
    store.add_feedback("c-mid", rating=3)
    # no feedback: nothing
    _chat(store, "c-none", "Unrated question.", ["Unrated answer."])
    # completion endpoint, up: completions.jsonl
    _completion(store, "c-comp", "Translate to French: cat ->", " chat")
    store.add_feedback("c-comp", rating="up")
    # n=2: choice 0 down then up (latest wins: example); choice 1 down + correction, then
    # down again without one (the correction is kept: example + preference pair)
    _chat(store, "c-n2", "Capital of Italy?", ["Rome.", "Milan."])
    store.add_feedback("c-n2", rating="down", choice=0)
    store.add_feedback("c-n2", rating="up", choice=0)
    store.add_feedback("c-n2", rating=1, choice=1, correction="Rome.")
    store.add_feedback("c-n2", rating="down", choice=1, comment="still wrong")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_rules_counts_and_redaction(store: FeedbackStore, tmp_path: Path) -> None:
    _feedback_db(store)
    out = tmp_path / "export"
    summary = export_feedback(store, out)

    train = _jsonl(out / "train.jsonl")
    by_key = {(r["completion_id"], r["choice"]): r for r in train}
    assert set(by_key) == {("c-corr", 0), ("c-good", 0), ("c-n2", 0), ("c-n2", 1)}
    corr = by_key[("c-corr", 0)]
    assert [m["role"] for m in corr["messages"]] == ["system", "user", "assistant"]
    assert corr["messages"][-1]["content"] == "Refunds take 5 days; we will mail you."
    assert corr["messages"][1]["content"] == "Mail [EMAIL] or call [PHONE] about my refund."
    assert corr["source"] == "correction"
    assert by_key[("c-good", 0)]["messages"][-1] == {"role": "assistant", "content": "Red."}
    assert by_key[("c-good", 0)]["source"] == "rating"
    assert by_key[("c-n2", 0)]["messages"][-1]["content"] == "Rome."
    assert by_key[("c-n2", 1)]["messages"][-1]["content"] == "Rome."  # the correction

    assert _jsonl(out / "completions.jsonl") == [
        {"prompt": "Translate to French: cat ->", "completion": " chat",
         "completion_id": "c-comp", "choice": 0, "source": "rating"}
    ]  # fmt: skip
    prefs = {p["completion_id"]: p for p in _jsonl(out / "preferences.jsonl")}
    assert set(prefs) == {"c-corr", "c-n2"}
    assert prefs["c-corr"]["chosen"] == "Refunds take 5 days; we will mail you."
    assert prefs["c-corr"]["rejected"] == "I cannot help."
    assert prefs["c-corr"]["prompt"][1]["content"].startswith("Mail [EMAIL] or call [PHONE]")
    assert prefs["c-n2"] == {"prompt": [{"role": "user", "content": "Capital of Italy?"}],
                             "chosen": "Rome.", "rejected": "Milan.",
                             "completion_id": "c-n2", "choice": 1}  # fmt: skip

    for name in ("train.jsonl", "completions.jsonl", "preferences.jsonl", "export.json"):
        written = (out / name).read_text(encoding="utf-8")
        assert EMAIL not in written and PHONE not in written and "7946" not in written

    assert json.loads((out / "export.json").read_text()) == summary
    assert summary["completions_seen"] == 6 and summary["answers_with_feedback"] == 6
    assert summary["examples"] == {"from_corrections": 2, "from_good_ratings": 3,
                                   "chat": 4, "completion": 1}  # fmt: skip
    assert summary["preference_pairs"] == 2
    assert summary["skipped"] == {"no feedback": 1,
                                  "rating below min_rating 0.75 and no correction": 1}  # fmt: skip
    pii = summary["anonymization"]
    assert pii["policy"] == "redact" and pii["found"]["email"] == 2  # train row + pair
    assert pii["found"]["phone"] == 2


def test_export_without_anonymisation_and_min_rating(store: FeedbackStore, tmp_path: Path) -> None:
    _feedback_db(store)
    summary = export_feedback(store, tmp_path / "raw", anonymize=None, min_rating=0.5)
    assert EMAIL in (tmp_path / "raw" / "train.jsonl").read_text(encoding="utf-8")
    assert summary["anonymization"] == {"policy": None, "found": {}, "note": "not scanned"}
    assert summary["examples"]["from_good_ratings"] == 4  # the 3 of 5 (0.5) counts now
    with pytest.raises(Exception, match="anonymisation policy"):
        export_feedback(store, tmp_path / "x", anonymize="redcat")


def test_exported_train_is_chat_data_for_the_data_stage(
    store: FeedbackStore, tmp_path: Path
) -> None:
    from tunelab.data.ingest import CleanSpec
    from tunelab.data.prepare import DataSpec, SplitSpec, prepare

    _feedback_db(store)
    for i in range(8):  # enough distinct rows for three splits
        _chat(store, f"extra-{i}", f"Question {i}: how many legs has animal number {i * 37}?",
              [f"It has {i + 2} legs, as animal {i * 37} always did in {1990 + i}."])  # fmt: skip
        store.add_feedback(f"extra-{i}", rating="up")
    out = tmp_path / "export"
    export_feedback(store, out)
    rows = _jsonl(out / "train.jsonl")
    spec = DataSpec.single(str(out / "train.jsonl"), clean=CleanSpec(dedupe=False),
                           split=SplitSpec(val=0.1, test=0.1), anonymize=None)  # fmt: skip
    prep = prepare(spec, tmp_path / "prepared")
    assert prep.format == "chat"
    assert (tmp_path / "prepared" / "rejected.jsonl").read_text() == ""
    assert sum(len(split) for split in prep.splits.values()) == len(rows) == 12


# --- the CLI -------------------------------------------------------------------------


def test_cli_list_stats_export(store: FeedbackStore, tmp_path: Path) -> None:
    _feedback_db(store)
    db = str(tmp_path / "feedback.db")
    runner = CliRunner()

    result = runner.invoke(feedback_app, ["list", "--db", db])
    assert result.exit_code == 0, result.output
    assert "c-n2" in result.output and "c-none" in result.output

    result = runner.invoke(feedback_app, ["list", "--db", db, "--without-feedback", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.output)] == ["c-none"]

    result = runner.invoke(feedback_app, ["stats", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(store.stats()))
    result = runner.invoke(feedback_app, ["stats", "--db", db])
    assert result.exit_code == 0 and "tiny" in result.output

    out = tmp_path / "cli-export"
    result = runner.invoke(feedback_app, ["export", "--db", db, "--out", str(out),
                                          "--anonymize", "mask"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preference pairs" in result.output
    summary = json.loads((out / "export.json").read_text())
    assert summary["anonymization"]["policy"] == "mask"
    assert EMAIL not in (out / "train.jsonl").read_text(encoding="utf-8")

    result = runner.invoke(feedback_app, ["export", "--db", db, "--out", str(out),
                                          "--anonymize", "off", "--json"])  # fmt: skip
    assert result.exit_code == 0 and json.loads(result.output)["anonymization"]["policy"] is None

    missing = runner.invoke(feedback_app, ["stats", "--db", str(tmp_path / "none.db")])
    assert isinstance(missing.exception, FeedbackError)
    assert "no feedback store" in str(missing.exception)
    assert not (tmp_path / "none.db").exists()
