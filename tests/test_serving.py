"""The OpenAI-compatible server: the app in-process (TestClient), a classification run's
calibrated label probabilities, and a real server process driven by the openai client."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from _server import running_server
from conftest import tiny_config, write_sentiment_jsonl
from tunelab.errors import ConfigError
from tunelab.models.generation import load_any
from tunelab.serving.app import check_auth_rule, create_app, is_loopback, load_api_keys
from tunelab.serving.decoding import Piece, SamplingParams, first_stop, held_back
from tunelab.serving.engine import Engine, Limits, Result, prompt_budget
from tunelab.serving.schemas import Overloaded
from tunelab.serving.store import FeedbackStore, InvalidFeedback, UnknownCompletion

KEY = "sk-test-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "the film was great"}]


class FakeStore:
    """The two methods the app calls, with the real store's errors."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.feedback: list[dict[str, Any]] = []

    def log_completion(self, **row: Any) -> None:
        self.rows[row["id"]] = row

    def add_feedback(self, completion_id: str, **fields: Any) -> dict[str, Any]:
        if completion_id not in self.rows:
            raise UnknownCompletion(f"no completion with id {completion_id!r}")
        if fields["choice"] >= len(self.rows[completion_id]["outputs"]):
            raise InvalidFeedback("choice out of range")
        self.feedback.append({"completion_id": completion_id, **fields})
        return {"id": len(self.feedback), "completion_id": completion_id, **fields}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any, Any]:
    return load_any(str(tiny_model_dir))


@pytest.fixture(scope="module")
def engine(tiny: tuple[Any, Any, Any]) -> Any:
    model, tok, info = tiny
    eng = Engine(model, tok, info, limits=Limits(max_output_tokens=64, queue_size=8))
    yield eng
    eng.close()


@pytest.fixture()
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture()
def client(engine: Engine, store: FakeStore) -> TestClient:
    app = create_app(engine, api_keys={KEY, "sk-other"}, store=store, model_name="tiny")
    return TestClient(app, headers=AUTH)


def chat(client: TestClient, **body: Any) -> Any:
    payload = {"model": "tiny", "messages": HI, "max_tokens": 6, **body}
    return client.post("/v1/chat/completions", json=payload)


def sse(text: str) -> list[Any]:
    """The data payloads of an event stream ("[DONE]" kept as a string)."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def prompt_ids(tok: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt as the client's messages give it, tokenised here independently."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


# ---- pure helpers ------------------------------------------------------------------------


def test_stop_helpers():
    assert first_stop("abc. def\n", [".", "\n"]) == 3
    assert first_stop("abc", ["x"]) is None
    assert held_back("hello wor", ["world"]) == 3  # "wor" may become "world"
    assert held_back("hello", ["world"]) == 0
    assert held_back("ab", ["abc", "b"]) == 2
    assert prompt_budget(512, 64, None) == 448
    assert prompt_budget(512, 64, 100) == 100


def test_auth_rule_and_keys(tmp_path, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    with pytest.raises(ConfigError, match="loopback") as err:
        check_auth_rule("0.0.0.0", set(), no_auth=True)
    assert "--api-key-file" in str(err.value.hint)
    with pytest.raises(ConfigError, match="no API keys"):
        check_auth_rule("0.0.0.0", set(), no_auth=False)
    with pytest.raises(ConfigError, match="no API keys"):
        check_auth_rule("127.0.0.1", set(), no_auth=False)
    check_auth_rule("127.0.0.1", set(), no_auth=True)
    check_auth_rule("0.0.0.0", {"k"}, no_auth=False)
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-a\n\n  sk-b  \n")
    assert load_api_keys(keys, "sk-c, ,sk-d") == {"sk-a", "sk-b", "sk-c", "sk-d"}
    with pytest.raises(ConfigError, match="not found"):
        load_api_keys(tmp_path / "missing", None)


def test_serve_refuses_a_public_host_without_keys(monkeypatch, capsys):
    from tunelab.cli.serve import serve_main

    monkeypatch.delenv("TUNELAB_API_KEYS", raising=False)
    with pytest.raises(SystemExit) as exit_:
        serve_main(["tiny", "--host", "0.0.0.0", "--no-auth"])
    assert exit_.value.code == 1
    assert "only allowed on a loopback host" in capsys.readouterr().err


# ---- the app in-process ------------------------------------------------------------------


def test_health_models_and_auth(engine):
    app = create_app(engine, api_keys={KEY, "sk-other"}, model_name="tiny")
    anon = TestClient(app)
    assert anon.get("/health").json()["status"] == "ok"  # no key needed
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        r = anon.get("/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert anon.get("/metrics").status_code == 401
    assert anon.post("/v1/chat/completions", json={}).status_code == 401  # auth before body
    r = anon.get("/v1/models", headers={"Authorization": "bearer sk-other"})
    assert r.status_code == 200
    assert r.json()["data"][0]["id"] == "tiny" and r.json()["object"] == "list"
    assert anon.get("/v1/models/tiny", headers=AUTH).json()["id"] == "tiny"


def test_chat_completion_shape_and_usage(client, tiny, store):
    r = chat(client, seed=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["logprobs"] is None and "tunelab" not in choice  # not a classifier
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(prompt_ids(tiny[1], HI))
    assert usage["completion_tokens"] <= 6
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    row = store.rows[body["id"]]  # logged once produced
    assert row["endpoint"] == "chat" and row["prompt"] == HI and row["model"] == "tiny"
    assert row["outputs"] == [choice["message"]["content"]] and row["usage"] == usage
    assert row["params"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 6,
        "stop": [],
        "n": 1,
        "seed": 3,
    }
    assert row["latency_ms"] > 0 and abs(row["created"] - time.time()) < 60


def test_greedy_max_tokens_and_n(client):
    # the untrained tiny model's argmax is <unk> (a special token: no text), never the end
    r = chat(client, temperature=0, max_tokens=5, n=2).json()
    assert [c["finish_reason"] for c in r["choices"]] == ["length", "length"]
    assert r["choices"][0]["message"] == r["choices"][1]["message"]  # greedy: same choice
    assert r["usage"]["completion_tokens"] == 10
    r = chat(client, temperature=0, max_completion_tokens=1, max_tokens=9).json()
    assert r["usage"]["completion_tokens"] == 1  # the newer name wins


def test_seed_makes_sampling_repeatable(client):
    first = chat(client, seed=11, n=3, max_tokens=12).json()
    again = chat(client, seed=11, n=3, max_tokens=12).json()
    other = chat(client, seed=12, n=3, max_tokens=12).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert texts != [c["message"]["content"] for c in other["choices"]]
    assert len(set(texts)) > 1  # n samples, not one sample n times


def test_stop_sequence_cuts_the_text(client):
    full = chat(client, seed=5, max_tokens=20).json()["choices"][0]
    text = full["message"]["content"]
    assert len(text) > 8, text
    stop = text[4:7]
    cut = chat(client, seed=5, max_tokens=20, stop=[stop, "zzzz"]).json()["choices"][0]
    assert cut["message"]["content"] == text[: text.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_logprobs_shape_and_values(client, tiny):
    model, tok, _ = tiny
    body = chat(client, seed=2, max_tokens=4, logprobs=True, top_logprobs=3).json()
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for entry in content:
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry["logprob"] <= tops[0] + 1e-6 and entry["bytes"] == list(
            entry["token"].encode()
        )
    # reference: the first token's log-probability from a plain forward pass of the prompt
    ids = prompt_ids(tok, HI)
    with torch.no_grad():
        logp = torch.log_softmax(model.lm(torch.tensor([ids])).logits[0, -1], dim=-1)
    assert content[0]["top_logprobs"][0]["logprob"] == pytest.approx(logp.max().item(), abs=1e-4)
    assert (logp - content[0]["logprob"]).abs().min().item() < 1e-4  # some token's logprob

    legacy = client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": "the film", "max_tokens": 4, "seed": 2, "logprobs": 2},
    )
    lp = legacy.json()["choices"][0]["logprobs"]
    n = len(lp["tokens"])
    assert n and len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert all(len(t) == 2 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 0


def test_chat_stream_matches_the_plain_response(client):
    plain = chat(client, seed=4, max_tokens=8, logprobs=True).json()
    r = chat(
        client,
        seed=4,
        max_tokens=8,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == plain["choices"][0]["message"]["content"]
    streamed_lp = [
        t for c in chunks[1:-1] for t in (c["choices"][0]["logprobs"] or {}).get("content") or []
    ]
    assert streamed_lp == plain["choices"][0]["logprobs"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finish[-1] == plain["choices"][0]["finish_reason"] and not any(finish[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_completions_plain_and_stream(client, tiny, store):
    body = {"model": "default", "prompt": ["the film was"], "max_tokens": 5, "seed": 9}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    plain = r.json()
    assert plain["object"] == "text_completion" and plain["id"].startswith("cmpl-")
    assert plain["usage"]["prompt_tokens"] == len(
        tiny[1]("the film was", add_special_tokens=False)["input_ids"]
    )
    assert store.rows[plain["id"]]["prompt"] == "the film was"
    assert store.rows[plain["id"]]["endpoint"] == "completion"
    events = sse(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert text == plain["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


def test_streams_of_several_choices(client):
    for body in ({"temperature": 0, "n": 2}, {"seed": 8, "n": 3}):
        plain = chat(client, **body).json()
        events = sse(chat(client, **body, stream=True).text)[:-1]
        for choice in plain["choices"]:
            mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == choice["index"]]
            assert (
                "".join(c["delta"].get("content") or "" for c in mine)
                == choice["message"]["content"]
            )
            assert [c["finish_reason"] for c in mine if c["finish_reason"]] == [
                choice["finish_reason"]
            ]


def test_penalties_change_greedy_decoding(client):
    plain = chat(client, temperature=0, max_tokens=5).json()["choices"][0]["message"]["content"]
    assert plain == ""  # <unk> five times
    for penalty in (
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
        {"repetition_penalty": 3.0},
    ):
        body = chat(client, temperature=0, max_tokens=5, **penalty).json()
        assert body["choices"][0]["message"]["content"] != plain, penalty
    assert chat(client, presence_penalty=2.5).status_code == 400


def test_cancel_stops_decoding(engine):
    cancel, pieces = threading.Event(), []

    def on_event(event: Any) -> None:
        if isinstance(event, Piece):
            pieces.append(event)
            cancel.set()  # the client went away after the first piece

    params = SamplingParams(max_tokens=60, seed=1)
    job = lambda: engine.chat(HI, params, on_event=on_event, cancel=cancel)  # noqa: E731
    result = engine.submit(job).result()
    assert result.choices[0].tokens < 5 and result.choices[0].finish_reason == "length"
    assert pieces[-1].finish_reason == "length"


def test_a_classifier_head_answers_with_its_most_probable_label(tiny, tiny_model_dir):
    from tunelab.models.loading import load_base
    from tunelab.models.task_model import build_task_model

    _, tok, _ = tiny
    words = ["positive", "negative"]
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    lm = load_base(str(tiny_model_dir))
    model = build_task_model(lm, kind="frozen", head="classifier", label_token_ids=ids)
    model.eval()
    info = {
        "labels": ["pos", "neg"],
        "label_words": {"pos": "positive", "neg": "negative"},
        "head": "classifier",
    }
    eng = Engine(model, tok, info, calibration_temperature=1.5)
    try:
        c = TestClient(create_app(eng, api_keys=None, model_name="tiny"))
        body = c.post("/v1/chat/completions", json={"model": "tiny", "messages": HI}).json()
        choice = body["choices"][0]
        probs = choice["tunelab"]["label_probs"]
        # reference: softmax(classifier(last hidden state) / T), T = 1.5
        prompt = torch.tensor([prompt_ids(tok, HI)])
        with torch.no_grad():
            hidden = model.hidden(prompt, torch.ones_like(prompt))[0, -1]
            expected = torch.softmax(torch.log_softmax(model.classifier(hidden), -1) / 1.5, -1)
        assert [probs["pos"], probs["neg"]] == pytest.approx(expected.tolist(), abs=1e-5)
        best = "positive" if probs["pos"] > probs["neg"] else "negative"
        assert choice["message"]["content"] == best and choice["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == 0
    finally:
        eng.close()


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 65}, "max_tokens"),  # over the server's limit of 64
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"top_logprobs": 3}, None),  # needs logprobs: true
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": None}, "model"),
    ],
)
def test_invalid_chat_requests_are_400(client, change, param):
    r = chat(client, **change)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "change",
    [{"echo": True}, {"prompt": ["a", "b"]}, {"prompt": ""}, {"logprobs": 6}, {"suffix": "x"}],
)
def test_invalid_completion_requests_are_400(client, change):
    body = {"model": "tiny", "prompt": "the film", "max_tokens": 2, **change}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_bad_json_unknown_model_and_long_prompt(client):
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"
    r = chat(client, model="gpt-4o")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert chat(client, model="default").status_code == 200
    assert chat(client, unknown_field={"x": 1}).status_code == 200  # ignored, like OpenAI
    long = [{"role": "user", "content": "the film was great " * 200}]  # > 512 positions
    r = chat(client, messages=long, stream=True)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "512" in r.json()["error"]["message"]
    r = client.post(
        "/v1/chat/completions",
        content=b"x" * (5 << 20),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_prompt_limit_is_configurable(tiny):
    model, tok, info = tiny
    eng = Engine(model, tok, info, limits=Limits(max_prompt_tokens=10))
    try:
        c = TestClient(create_app(eng, api_keys=None, model_name="tiny"))
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "the film " * 20})
        assert r.status_code == 400 and "capped at 10" in r.json()["error"]["message"]
        ok = c.post("/v1/completions", json={"model": "tiny", "prompt": "the film"})
        assert ok.status_code == 200
    finally:
        eng.close()


def test_a_full_queue_answers_503(tiny):
    model, tok, info = tiny
    eng = Engine(model, tok, info, limits=Limits(queue_size=1))
    release = threading.Event()
    try:
        c = TestClient(create_app(eng, api_keys=None, model_name="tiny"))
        eng.submit(release.wait)  # the worker is busy ...
        deadline = time.time() + 10
        while eng.worker._queue.qsize() and time.time() < deadline:
            time.sleep(0.01)
        eng.submit(lambda: None)  # ... and the one queue slot is taken
        with pytest.raises(Overloaded):
            eng.submit(lambda: None)
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": HI})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        release.set()
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 2})
        assert r.status_code == 200
        metrics = c.get("/metrics").json()
        assert metrics["queue"]["rejected"] == 2 and metrics["queue"]["size"] == 1
        assert metrics["requests"]["/v1/chat/completions"] == {"200": 1, "503": 1}
    finally:
        release.set()
        eng.close()


def test_a_failing_generation_is_a_500_and_the_server_goes_on(client, engine, monkeypatch):
    calls = Counter()

    def boom(*args: Any, **kwargs: Any) -> Result:
        calls["n"] += 1
        raise RuntimeError("CUDA on fire")

    before = client.get("/metrics").json()
    with monkeypatch.context() as m:
        m.setattr(engine, "chat", boom)
        r = chat(client)
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        assert "RuntimeError" in r.json()["error"]["message"]
        streamed = sse(chat(client, stream=True).text)  # fails before the stream starts
        assert streamed == [] or "error" in streamed[-1]
    assert calls["n"] == 2
    assert chat(client).status_code == 200  # the worker survived
    after = client.get("/metrics").json()
    assert after["errors"]["unexpected"] == before["errors"]["unexpected"] + 2
    assert after["engine"]["failed"] == before["engine"]["failed"] + 2


def test_an_error_after_the_stream_started_is_an_error_event(client, engine, monkeypatch):
    real = engine._decode

    def half(ids: Any, params: Any, on_event: Any, cancel: Any) -> Any:
        real(ids, params, None, cancel)
        raise RuntimeError("lost the GPU")

    monkeypatch.setattr(engine, "_decode", half)
    events = sse(chat(client, stream=True).text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["type"] == "server_error" and "[DONE]" not in events
    monkeypatch.undo()
    assert chat(client).status_code == 200


def test_a_store_failure_does_not_fail_the_request(engine):
    class Broken(FakeStore):
        def log_completion(self, **row: Any) -> None:
            raise OSError("disk full")

    c = TestClient(create_app(engine, api_keys=None, store=Broken(), model_name="tiny"))
    assert chat(c).status_code == 200
    assert c.get("/metrics").json()["errors"]["log_failures"] == 1


def test_metrics_move(client):
    before = client.get("/metrics").json()
    assert chat(client, max_tokens=3).status_code == 200
    assert chat(client, temperature=9).status_code == 400
    after = client.get("/metrics").json()
    route = "/v1/chat/completions"
    grew = Counter(after["requests"][route]) - Counter(before["requests"].get(route, {}))
    assert grew == {"200": 1, "400": 1}
    assert after["latency_ms"]["count"] == before["latency_ms"]["count"] + 1
    assert (
        after["latency_ms"]["p50"] > 0 and after["latency_ms"]["p99"] >= after["latency_ms"]["p50"]
    )
    assert after["tokens"]["completion"] > before["tokens"]["completion"]
    assert after["tokens_per_second"] > 0 and after["queue"]["depth"] == 0
    assert after["errors"]["client"] >= before["errors"]["client"] + 1


def test_feedback_with_a_fake_store(client, store):
    rid = chat(client, n=2).json()["id"]
    r = client.post(
        "/v1/feedback",
        json={"id": rid, "rating": "down", "choice": 1, "correction": "a better answer"},
    )
    assert r.status_code == 200 and r.json()["completion_id"] == rid
    assert store.feedback[-1]["rating"] == "down" and store.feedback[-1]["choice"] == 1
    assert client.post("/v1/feedback", json={"id": rid, "rating": 4}).status_code == 200
    r = client.post("/v1/feedback", json={"id": "chatcmpl-nope", "rating": "up"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "completion_not_found"
    r = client.post("/v1/feedback", json={"id": rid, "rating": "up", "choice": 5})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_feedback"
    for rating in (0, 6, "meh", True, 2.5):
        assert client.post("/v1/feedback", json={"id": rid, "rating": rating}).status_code == 400


def test_feedback_is_off_without_a_store(engine):
    c = TestClient(create_app(engine, api_keys=None, store=None, model_name="tiny"))
    r = c.post("/v1/feedback", json={"id": "x", "rating": "up"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_disabled"


def test_feedback_with_the_real_store(engine, tmp_path):
    real = FeedbackStore(str(tmp_path / "feedback.db"))
    try:
        c = TestClient(create_app(engine, api_keys=None, store=real, model_name="tiny"))
        body = chat(c, seed=1).json()
        events = sse(chat(c, seed=1, stream=True).text)
        r = c.post("/v1/feedback", json={"id": body["id"], "rating": 5, "comment": "nice"})
        assert r.status_code == 200 and r.json()["rating"] == 5
        row = real.get_completion(body["id"])
        assert row is not None and row["outputs"] == [body["choices"][0]["message"]["content"]]
        assert row["feedback"][0]["comment"] == "nice" and row["params"]["seed"] == 1
        streamed = real.get_completion(events[0]["id"])
        assert streamed is not None and streamed["outputs"] == row["outputs"]
        assert c.post("/v1/feedback", json={"id": "no", "rating": 1}).status_code == 404
    finally:
        real.close()


# ---- a classification model --------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_model_dir) -> Path:
    from tunelab.cli.main import app

    root = tmp_path_factory.mktemp("cls-run")
    data = write_sentiment_jsonl(root / "sentiment.jsonl", n=40)
    cfg = tiny_config(
        tiny_model_dir,
        data,
        root / "runs",
        train={"max_steps": 4, "eval_every": 4},
        eval={"base": False},
        forgetting={"suite": "none"},
        compare={"enabled": False},
        calibration={"enabled": "off"},
    )
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    run = root / "runs" / "tiny"
    (run / "model" / "calibration.json").write_text(json.dumps({"temperature": 2.0}))
    return run


def test_label_probabilities_use_the_saved_temperature(classifier_run):
    from tunelab.models.saved import read_temperature

    model, tok, info = load_any(str(classifier_run))
    assert info is not None and info["labels"] == ["neg", "pos"]
    temperature = read_temperature(classifier_run)
    assert temperature == 2.0
    eng = Engine(model, tok, info, calibration_temperature=temperature)
    try:
        c = TestClient(create_app(eng, api_keys=None, model_name="tiny"))
        words = [info["label_words"][x] for x in info["labels"]]
        user = f"Classify the text into one of: {', '.join(words)}.\n\nText: dull boring film\n\n"
        messages = [{"role": "user", "content": user + "Answer with the label only."}]
        body = c.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": messages, "max_tokens": 2, "n": 2},
        ).json()
        ext = body["choices"][0]["tunelab"]
        assert ext == body["choices"][1]["tunelab"] and ext["temperature"] == 2.0
        probs = ext["label_probs"]
        assert list(probs) == ["neg", "pos"] and sum(probs.values()) == pytest.approx(1.0)
        # reference: softmax over the label words' first-token log-probs at the prompt's end,
        # divided by T = 2 (a direct forward pass, not tunelab's scoring code)
        ids = prompt_ids(tok, messages)
        with torch.no_grad():
            logp = torch.log_softmax(model.lm(torch.tensor([ids])).logits[0, -1], dim=-1)
        first = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
        expected = torch.softmax(logp[first] / 2.0, dim=-1).tolist()
        assert [probs["neg"], probs["pos"]] == pytest.approx(expected, abs=1e-5)
        uncalibrated = torch.softmax(logp[first], dim=-1).tolist()
        assert [probs["neg"], probs["pos"]] != pytest.approx(uncalibrated, abs=1e-5)
        events = sse(
            c.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": messages, "max_tokens": 2, "stream": True},
            ).text
        )
        assert events[0]["choices"][0]["tunelab"]["label_probs"] == pytest.approx(probs)
        plain = c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
        assert "tunelab" not in plain.json()["choices"][0]
    finally:
        eng.close()


# ---- a real server process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Any:
    """``python -m tunelab.cli.serve`` on 127.0.0.1 with a key file and a SQLite store."""
    root = tmp_path_factory.mktemp("server")
    (root / "keys").write_text(f"{KEY}\n")
    db = root / "feedback.db"
    options = ["--api-key-file", str(root / "keys"), "--db", str(db), "--name", "tiny",
               "--max-tokens-limit", "64", "--log-level", "warning"]  # fmt: skip
    with running_server(tiny_model_dir, root / "server.log", *options) as real:
        yield {"base": real.base, "db": db, "proc": real.proc}


def test_real_server_with_the_openai_client(server):
    import httpx
    import openai

    api = openai.OpenAI(base_url=f"{server['base']}/v1", api_key=KEY, max_retries=0)
    out = api.chat.completions.create(model="tiny", messages=HI, max_tokens=5, seed=1)
    assert out.choices[0].message.role == "assistant" and out.usage is not None
    assert out.usage.completion_tokens <= 5 and out.model == "tiny"
    stream = api.chat.completions.create(
        model="tiny",
        messages=HI,
        max_tokens=5,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == out.usage.total_tokens
    done = api.completions.create(model="default", prompt="the film", max_tokens=4, seed=2)
    assert done.choices[0].finish_reason in ("stop", "length") and done.id.startswith("cmpl-")
    assert [m.id for m in api.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="tiny", messages=HI, temperature=7)
    assert bad.value.code == "invalid_value"
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-4o", messages=HI)
    wrong = openai.OpenAI(base_url=f"{server['base']}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny", messages=HI)

    r = httpx.post(
        f"{server['base']}/v1/feedback",
        headers=AUTH,
        json={"id": out.id, "rating": "up", "correction": "hello"},
    )
    assert r.status_code == 200, r.text
    real = FeedbackStore(str(server["db"]))
    try:
        row = real.get_completion(out.id)
        assert row is not None and row["feedback"][0]["correction"] == "hello"
    finally:
        real.close()
    metrics = httpx.get(f"{server['base']}/metrics", headers=AUTH).json()
    assert metrics["requests"]["/v1/chat/completions"]["200"] >= 2


def test_real_server_under_16_concurrent_clients(server):
    import httpx

    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=server["base"], headers=AUTH, timeout=60) as c:
            for j in range(3):
                body = {
                    "model": "tiny",
                    "messages": HI,
                    "max_tokens": 8,
                    "seed": i * 10 + j,
                    "stream": j == 2,
                }
                r = c.post("/v1/chat/completions", json=body)
                with lock:
                    statuses[r.status_code] += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == {200: 48}, statuses
    assert server["proc"].poll() is None


def test_load_bench_against_the_real_server(server):
    from tunelab.recipes.bench.serve_load import run_load

    out = run_load(server["base"], KEY, clients=4, requests=12, max_tokens=4, db=server["db"])
    assert out["status_counts"] == {"200": 12}
    assert out["requests_per_second"] > 0 and out["latency_ms"]["p99"] >= out["latency_ms"]["p50"]
    assert out["feedback"]["sent"] == out["feedback"]["stored"] > 0
    with pytest.raises(ConfigError, match="loopback"):
        run_load("http://example.com:8000", KEY, requests=1)
