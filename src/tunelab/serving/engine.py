"""The serving engine: one model behind one worker thread and a bounded queue of requests.

Every model and tokenizer call runs on the engine's :class:`~tunelab.serving.worker.Worker`
thread, in arrival order (:meth:`Engine.submit` raises
:class:`~tunelab.serving.schemas.Overloaded` — a 503 — when ``Limits.queue_size`` requests
already wait).

Decoding is ``model.lm.generate`` with hooks of our own (:mod:`tunelab.serving.decoding`):
a logits processor that records logprobs and a stopping criterion that follows each row's
text for stop sequences, token counts and streaming.

``temperature`` below ``GREEDY_BELOW`` (0 included) is greedy decoding (``n`` choices are
then one decode, repeated); otherwise sampling with ``temperature`` and ``top_p`` (top-k
off), seeded with ``torch.manual_seed(seed)`` on the worker when a seed is given.

For a classification model (``info["labels"]``) every chat request also gets calibrated
label probabilities: ``softmax(label_logits(prompt) / T)`` with the temperature ``T`` saved
by ``tunelab calibrate`` (:func:`tunelab.models.saved.read_temperature`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from transformers import RepetitionPenaltyLogitsProcessor

from tunelab.data.tokenize import Encoded, PromptFormatter, label_token_ids
from tunelab.data.types import Example
from tunelab.evaluation.scoring import label_logits
from tunelab.models.task_model import TaskModel
from tunelab.serving.decoding import (
    Choice,
    Penalties,
    Piece,
    Recorder,
    SamplingParams,
    Tracker,
    fan_out,
)
from tunelab.serving.schemas import InvalidRequest
from tunelab.serving.worker import Worker

__all__ = ["Engine", "Event", "Limits", "OnEvent", "Result", "Started", "prompt_budget"]

T = TypeVar("T")
# Below this temperature decoding is greedy, as in vLLM: logits / 1e-40 overflow to inf and
# sampling would fail (found by fuzzing the API, tests/test_api_fuzz.py).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait.

    ``max_prompt_tokens`` None: the model's context (max positions) minus ``max_tokens``.
    """

    max_output_tokens: int = 512
    max_prompt_tokens: int | None = None
    queue_size: int = 64


@dataclass
class Result:
    prompt_tokens: int
    choices: list[Choice]
    label_probs: dict[str, float] | None = None
    temperature: float | None = None  # the calibration temperature of ``label_probs``

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)


@dataclass(frozen=True)
class Started:
    """Stream event: the request passed its checks and decoding begins."""

    prompt_tokens: int
    label_probs: dict[str, float] | None = None
    temperature: float | None = None


Event = Started | Piece
OnEvent = Callable[[Event], None]


def prompt_budget(context: int, max_tokens: int, configured: int | None) -> int:
    """The longest prompt allowed: what the context leaves for ``max_tokens``, capped by
    the configured ``max_prompt_tokens``."""
    budget = context - max_tokens
    return budget if configured is None else min(budget, configured)


class Engine:
    """Owns ``model`` and ``tokenizer``; runs every call on one worker thread.

    ``info`` is the model's ``tunelab_model.json`` (None for a base model); with ``labels``
    it makes chat responses carry label probabilities at ``calibration_temperature``.
    """

    def __init__(
        self,
        model: TaskModel,
        tokenizer: Any,
        info: dict[str, Any] | None = None,
        *,
        calibration_temperature: float = 1.0,
        limits: Limits | None = None,
    ) -> None:
        self.model, self.tokenizer, self.info = model, tokenizer, info or {}
        self.limits = limits or Limits()
        self.calibration_temperature = calibration_temperature
        self.formatter = PromptFormatter(tokenizer, self.info.get("use_chat_template", "auto"))
        self.labels: list[str] | None = self.info.get("labels")
        words = self.info.get("label_words") or {}
        self.label_words = [words.get(x, x) for x in self.labels] if self.labels else None
        self._label_ids = label_token_ids(tokenizer, self.label_words) if self.label_words else None
        self.device = next(model.parameters()).device
        self.context = int(getattr(model.lm.config, "max_position_embeddings", 0) or 2048)
        self.eos_ids = _eos_ids(tokenizer, model.lm)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (self.eos_ids or [0])[0]
        self._lock = threading.Lock()
        self._tokens = {"prompt_tokens": 0, "completion_tokens": 0}
        self.worker = Worker(
            self.limits.queue_size, context=torch.inference_mode, on_result=self._count
        )

    # ---- the queue ----------------------------------------------------------------------

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` for the worker; its result (or exception) arrives in the Future.

        Raises :class:`~tunelab.serving.schemas.Overloaded` at once when
        ``Limits.queue_size`` requests wait.
        """
        return self.worker.submit(fn)

    def close(self, timeout: float = 10.0) -> None:
        """Let the worker finish what is queued, then stop it."""
        self.worker.close(timeout)

    def queue_depth(self) -> int:
        """Requests waiting plus the one being decoded."""
        return self.worker.depth()

    def stats(self) -> dict[str, Any]:
        """Counters since start: jobs, failures, rejections, tokens and worker busy time."""
        out = self.worker.stats()
        with self._lock:
            out.update(self._tokens)
        busy = out["busy_seconds"]
        out["busy_seconds"] = round(busy, 3)
        out["tokens_per_second"] = round(out["completion_tokens"] / busy, 2) if busy else 0.0
        return out

    def _count(self, result: Any) -> None:
        if isinstance(result, Result):
            with self._lock:
                self._tokens["prompt_tokens"] += result.prompt_tokens
                self._tokens["completion_tokens"] += result.completion_tokens

    def warm_up(self) -> None:
        """Decode one token once, so the first client does not pay for first-call setup."""
        params = SamplingParams(max_tokens=1, temperature=0.0)
        self.submit(lambda: self.chat([{"role": "user", "content": "hi"}], params)).result()

    # ---- checks that need no model (any thread) -----------------------------------------

    def check(self, params: SamplingParams, *, param: str = "max_tokens") -> None:
        """Raise :class:`InvalidRequest` when ``params`` exceed the server's limits."""
        limit = self.limits.max_output_tokens
        if params.max_tokens is not None and params.max_tokens > limit:
            raise InvalidRequest(
                f"{param} is {params.max_tokens}, above this server's limit of {limit} "
                "output tokens (max_output_tokens)",
                code="max_tokens_exceeded",
                param=param,
                hint=f"ask for at most {limit} tokens",
            )

    # ---- model work: only on the worker (through submit) --------------------------------

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        params: SamplingParams,
        *,
        on_event: OnEvent | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """The assistant's reply to ``messages`` (roles system/user/assistant).

        The prompt is rendered as in training (``PromptFormatter``: the chat template when
        the model has one); a model trained with a system prompt gets it when the client
        sends none.
        """
        msgs = list(messages)
        system = self.info.get("system_prompt")
        if system and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": system})
        text = self.formatter.prompt_text(Example(tuple(msgs), "", None, "serve"))
        ids = self.encode(text)
        params = self._resolve(params, len(ids), "messages")
        probs = self.label_probs(ids) if self._label_ids is not None else None
        temp = self.calibration_temperature if probs is not None else None
        if on_event is not None:
            on_event(Started(len(ids), probs, temp))
        if probs is not None and self.model.head == "classifier":
            return self._classifier_reply(ids, probs, params, on_event)
        result = self._decode(ids, params, on_event, cancel)
        result.label_probs, result.temperature = probs, temp
        return result

    def complete(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        on_event: OnEvent | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """The continuation of ``prompt``, used verbatim (no chat template)."""
        ids = self.encode(prompt)
        params = self._resolve(params, len(ids), "prompt")
        if on_event is not None:
            on_event(Started(len(ids)))
        return self._decode(ids, params, on_event, cancel)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as training encodes prompts (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def label_probs(self, prompt_ids: list[int]) -> dict[str, float]:
        """Calibrated ``{label: probability}`` of a prompt: softmax(scores / T) over the
        label log-likelihoods of :func:`~tunelab.evaluation.scoring.label_logits`."""
        assert self.labels is not None and self._label_ids is not None
        scores = label_logits(
            self.model,
            [Encoded(prompt_ids, len(prompt_ids))],
            self._label_ids,
            pad_id=int(self.pad_id),
            batch_size=1,
            precision="fp32",
        )[0]  # (C,)
        probs = torch.softmax(scores / self.calibration_temperature, dim=-1)
        return {label: float(p) for label, p in zip(self.labels, probs.tolist(), strict=True)}

    def _resolve(self, params: SamplingParams, prompt_len: int, param: str) -> SamplingParams:
        self.check(params)
        if prompt_len == 0:
            raise InvalidRequest("the prompt is empty", code="empty_prompt", param=param)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.limits.max_output_tokens, self.context - prompt_len))
        cap = self.limits.max_prompt_tokens
        budget = prompt_budget(self.context, max_tokens, cap)
        if prompt_len > budget:
            capped = f", capped at {cap}" if cap is not None else ""
            raise InvalidRequest(
                f"the prompt is {prompt_len} tokens; this server takes at most {budget} (max "
                f"prompt tokens: the model's context of {self.context} minus max_tokens "
                f"{max_tokens}{capped})",
                code="context_length_exceeded",
                param=param,
                hint="shorten the prompt or ask for fewer max_tokens",
            )
        return replace(params, max_tokens=max_tokens)

    def _classifier_reply(
        self,
        ids: list[int],
        probs: dict[str, float],
        params: SamplingParams,
        on_event: OnEvent | None,
    ) -> Result:
        """A classifier head answers with the most probable label word, nothing decoded."""
        labels, words = self.labels or [], self.label_words or []
        word = words[max(range(len(labels)), key=lambda i: probs[labels[i]])]
        if on_event is not None:
            for i in range(params.n):
                on_event(Piece(i, word, None, "stop"))
        choices = [
            Choice(word, "stop", 0, [] if params.logprobs else None) for _ in range(params.n)
        ]
        return Result(len(ids), choices, probs, self.calibration_temperature)

    def _decode(
        self,
        ids: list[int],
        params: SamplingParams,
        on_event: OnEvent | None,
        cancel: threading.Event | None,
    ) -> Result:
        assert params.max_tokens is not None
        sampling = params.temperature >= GREEDY_BELOW
        rows = params.n if sampling else 1  # greedy choices are all the same decode
        if sampling and params.seed is not None:
            torch.manual_seed(params.seed % 2**63)
        elif sampling:
            torch.seed()  # an unseeded request must not replay the last seeded one
        emit = on_event if rows == params.n or on_event is None else fan_out(on_event, params.n)
        recorder = Recorder(enabled=params.logprobs)
        tracker = Tracker(self.tokenizer, self.eos_ids, rows, params, recorder, emit, cancel)
        processors: list[Any] = [recorder]
        if params.frequency_penalty or params.presence_penalty:
            processors.append(
                Penalties(len(ids), params.frequency_penalty, params.presence_penalty)
            )
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        input_ids = torch.tensor([ids], device=self.device)
        self.model.lm.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            top_k=0 if sampling else None,
            repetition_penalty=1.0,  # a model default must not act before the recorder
            num_return_sequences=rows,
            logits_processor=processors,
            stopping_criteria=[tracker],
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
        )
        choices = tracker.finish()
        if rows != params.n:
            choices = [replace(choices[0]) for _ in range(params.n)]
        return Result(len(ids), choices)


def _eos_ids(tokenizer: Any, lm: Any) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for i in value if isinstance(value, list) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids
