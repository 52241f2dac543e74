"""The real server's OpenAPI schema, fuzzed with schemathesis over loopback: no request, valid
by the schema or not, gets a 5xx.

Every operation gets requests that fit its schema (positive) and, where it takes a body,
requests that break it (negative, sent as generated). A third of the positive ones name the
served model and a real completion id, and another third also repair what the schema cannot
say (non-empty message content, one prompt, no ``echo``/``suffix``), so that requests reach
decoding with every sampling option and not only the validation in front of it.
Derandomised: every run sends the same requests. The request count is printed at the end of
the module (``-s``); docs/faults.md has the figures. Without the bound on tiny temperatures
in ``serving/engine.py`` (``GREEDY_BELOW``) this test fails with a 500 on both endpoints.

Checks that hold: ``not_a_server_error``, ``negative_data_rejection`` (schema-breaking input
gets a 4xx), ``response_schema_conformance`` and ``response_headers_conformance``. Three do
not, by design: ``status_code_conformance`` (errors are OpenAI-style 400/404, FastAPI's
schema declares only 422), ``content_type_conformance`` (streams are ``text/event-stream``,
undeclared) and ``positive_data_acceptance`` (the server checks more than the schema says).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _server import running_server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

pytestmark = pytest.mark.fuzz

CHECKS = [
    not_a_server_error,
    openapi_checks.negative_data_rejection,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]
# examples per operation and mode; parameterless GETs have a single possible request
OPERATIONS = {
    "GET /health": 1,
    "GET /metrics": 1,
    "GET /v1/models": 1,
    "GET /v1/models/{model_id}": 60,
    "POST /v1/chat/completions": 300,
    "POST /v1/completions": 300,
    "POST /v1/feedback": 150,
}
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in OPERATIONS if label.startswith("POST")
]


@dataclass
class Api:
    base: str
    schema: Any
    completion_id: str  # a completion the server logged, for /v1/feedback
    tally: Counter  # (operation, mode, status) -> requests


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model_dir):
    import httpx

    root = tmp_path_factory.mktemp("fuzz")
    options = ["--no-auth", "--db", str(root / "feedback.db"), "--name", "tiny",
               "--max-tokens-limit", "16", "--log-level", "warning"]  # fmt: skip
    with running_server(tiny_model_dir, root / "server.log", *options) as server:
        done = httpx.post(f"{server.base}/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "hi", "max_tokens": 2})  # fmt: skip
        schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
        api = Api(server.base, schema, done.json()["id"], Counter())
        yield api
    sent = sum(api.tally.values())
    statuses = Counter(status for (_, _, status), n in api.tally.items() for _ in range(n))
    print(f"\nAPI fuzzing: {sent} requests, statuses {dict(sorted(statuses.items()))}")


def _steer(case: Any, level: int, completion_id: str) -> Any:
    """Level 0: as generated; 1: the served model and a real completion id; 2: also what the
    schema cannot say (non-empty message content, one prompt, no echo or suffix)."""
    body = case.body if isinstance(case.body, dict) else None
    if level >= 1 and body is not None:
        if "model" in body:
            body["model"] = "tiny"
        if "completion_id" in body:
            body["completion_id"] = completion_id
    if level >= 1 and case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = "tiny"
    if level >= 2 and body is not None:
        for message in body.get("messages") or []:
            if isinstance(message, dict) and not message.get("content"):
                message["content"] = "the film was great"
        if isinstance(body.get("prompt"), list):
            body["prompt"] = body["prompt"][:1] or "x"
        elif body.get("prompt") == "":
            body["prompt"] = "x"
        body.pop("echo", None)
        body.pop("suffix", None)
    return case


def test_the_schema_lists_the_fuzzed_operations(api):
    labels = {result.ok().label for result in api.schema.get_all_operations()}
    assert labels == set(OPERATIONS)  # a new endpoint must join OPERATIONS


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{m.value} {lbl}" for lbl, m in CASES])
def test_no_request_gets_a_server_error(api, label, mode):
    operation = api.schema.find_operation_by_label(label)
    levels = st.integers(0, 2) if mode == GenerationMode.POSITIVE else st.just(0)  # keep the
    cases = st.tuples(operation.as_strategy(generation_mode=mode), levels).map(  # violation
        lambda pair: _steer(*pair, api.completion_id)
    )

    @settings(max_examples=OPERATIONS[label], derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases)
    def check(case: Any) -> None:
        response = case.call(base_url=api.base, timeout=60)
        api.tally[label, mode.value, response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    check()


@pytest.mark.parametrize(
    ("extra", "status"),
    [({"temperature": 1e-320}, 200), ({"temperature": 1e-40, "logprobs": 2}, 200),
     ({"repetition_penalty": 5e-324}, 400), ({"repetition_penalty": 0.01}, 200)],
)  # fmt: skip
def test_what_fuzzing_found(api, extra, status):
    # were 500s: logits / 1e-40 (or a penalty of 5e-324) overflow to inf, and sampling failed
    import httpx

    body = {"model": "tiny", "prompt": "the film", "max_tokens": 3, **extra}
    response = httpx.post(f"{api.base}/v1/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
