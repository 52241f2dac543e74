"""The serving engine: one model, one worker thread, a bounded queue of requests.

Every model and tokenizer call runs on the engine's single worker thread, in arrival
order: requests from many clients wait in a ``queue.Queue`` of ``Limits.queue_size``
(:meth:`Engine.submit` raises :class:`~tunelab.serving.schemas.Overloaded` — a 503 — when
it is full). A torch model is thus never used by two threads at once, and a fast
tokenizer never sees concurrent calls (they can fail with "Already borrowed").

Decoding is ``model.lm.generate`` with two hooks of our own:

- :class:`_Recorder`, the first logits processor, keeps the log-softmax of the raw logits of
  each step (before penalties, temperature and top-p) when logprobs are asked for;
- :class:`_Tracker`, a stopping criterion, sees every new token of every row: it decodes the
  text, cuts it at the first stop sequence, counts tokens, marks each row finished
  (``"stop"``: end-of-sequence token or stop sequence; ``"length"``: ``max_tokens`` reached)
  and, when streaming, hands each new piece of text to ``on_event`` from the worker thread.
  Text that could still become a stop sequence (or half a UTF-8 character) is held back
  until it cannot.

``temperature == 0`` is greedy decoding (``n`` choices are then one decode, repeated);
otherwise sampling with ``temperature`` and ``top_p`` (top-k off), seeded with
``torch.manual_seed(seed)`` on the worker when a seed is given.

For a classification model (``info["labels"]``) every chat request also gets calibrated
label probabilities: ``softmax(label_logits(prompt) / T)`` with the temperature ``T`` saved
by ``tunelab calibrate`` (:func:`tunelab.assess.read_temperature`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from transformers import LogitsProcessor, RepetitionPenaltyLogitsProcessor, StoppingCriteria

from tunelab.data.tokenize import Encoded, PromptFormatter, label_token_ids
from tunelab.data.types import Example
from tunelab.evaluation.scoring import label_logits
from tunelab.models.task_model import TaskModel
from tunelab.serving.schemas import (
    FinishReason,
    InvalidRequest,
    Overloaded,
    TokenLogprob,
    TopLogprob,
)

__all__ = [
    "Choice",
    "Engine",
    "Limits",
    "Piece",
    "Result",
    "SamplingParams",
    "Started",
    "first_stop",
    "held_back",
    "prompt_budget",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait.

    ``max_prompt_tokens`` None: the model's context (max positions) minus ``max_tokens``.
    """

    max_output_tokens: int = 512
    max_prompt_tokens: int | None = None
    queue_size: int = 64


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request. ``max_tokens`` None: as many as fit (capped by
    ``Limits.max_output_tokens``). ``top_logprobs`` alternatives per token when ``logprobs``."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0


@dataclass
class Choice:
    """One finished choice: its text, why it ended, tokens generated (end-of-sequence
    included) and, when asked, one logprob entry per token of ``text``."""

    text: str
    finish_reason: FinishReason
    tokens: int
    logprobs: list[TokenLogprob] | None = None


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


@dataclass(frozen=True)
class Piece:
    """Stream event: new text of choice ``index``; ``finish_reason`` set on its last piece."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None


Event = Started | Piece
OnEvent = Callable[[Event], None]


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop sequence starts in ``text``, None if none occurs."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop sequence (text a
    stream must not send yet: the next token may complete the stop sequence)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


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
        self._queue: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue(
            maxsize=self.limits.queue_size
        )
        self._lock = threading.Lock()
        self._busy = False
        self._counts = {
            "jobs": 0,
            "failed": 0,
            "rejected": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self._busy_seconds = 0.0
        self._worker = threading.Thread(target=self._work, name="tunelab-engine", daemon=True)
        self._worker.start()

    # ---- the queue ----------------------------------------------------------------------

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` for the worker; its result (or exception) arrives in the Future.

        Raises :class:`Overloaded` at once when ``Limits.queue_size`` requests wait.
        """
        future: Future[T] = Future()
        try:
            self._queue.put_nowait((future, fn))
        except queue.Full:
            with self._lock:
                self._counts["rejected"] += 1
            raise Overloaded(
                f"the server is busy: {self.limits.queue_size} requests are already waiting",
                code="queue_full",
                hint="retry after a moment, or start the server with a larger --queue-size",
            ) from None
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Let the worker finish what is queued, then stop it."""
        self._queue.put(None)
        self._worker.join(timeout)

    def queue_depth(self) -> int:
        """Requests waiting plus the one being decoded."""
        return self._queue.qsize() + int(self._busy)

    def stats(self) -> dict[str, Any]:
        """Counters since start: jobs, failures, rejections, tokens and worker busy time."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            busy = self._busy_seconds
        out["busy_seconds"] = round(busy, 3)
        out["tokens_per_second"] = round(out["completion_tokens"] / busy, 2) if busy else 0.0
        out["queue_depth"] = self.queue_depth()
        out["queue_size"] = self.limits.queue_size
        return out

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue  # the client went away while it waited
            self._busy, start = True, time.perf_counter()
            try:
                with torch.inference_mode():
                    result = fn()
            except Exception as exc:  # handed to the caller; the worker carries on
                with self._lock:
                    self._counts["failed"] += 1
                future.set_exception(exc)
            else:
                if isinstance(result, Result):
                    with self._lock:
                        self._counts["prompt_tokens"] += result.prompt_tokens
                        self._counts["completion_tokens"] += result.completion_tokens
                future.set_result(result)
            finally:
                with self._lock:
                    self._counts["jobs"] += 1
                    self._busy_seconds += time.perf_counter() - start
                self._busy = False

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
        sampling = params.temperature > 0
        rows = params.n if sampling else 1  # greedy choices are all the same decode
        if sampling and params.seed is not None:
            torch.manual_seed(params.seed % 2**63)
        elif sampling:
            torch.seed()  # an unseeded request must not replay the last seeded one
        emit = on_event if rows == params.n or on_event is None else _fan_out(on_event, params.n)
        recorder = _Recorder(enabled=params.logprobs)
        tracker = _Tracker(self, rows, params, recorder, emit, cancel)
        processors: list[Any] = [recorder]
        if params.frequency_penalty or params.presence_penalty:
            processors.append(
                _Penalties(len(ids), params.frequency_penalty, params.presence_penalty)
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


def _fan_out(on_event: OnEvent, n: int) -> OnEvent:
    """Repeat every piece of choice 0 for choices 1..n-1 (greedy: one decode, n choices)."""

    def emit(event: Event) -> None:
        if isinstance(event, Piece):
            for i in range(n):
                on_event(replace(event, index=i))
        else:
            on_event(event)

    return emit


class _Recorder(LogitsProcessor):
    """First logits processor: keeps log-softmax of the raw logits of the latest step."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.last: torch.Tensor | None = None  # (B, V)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _Penalties(LogitsProcessor):
    """OpenAI's frequency and presence penalties over the generated tokens:
    ``logit[j] -= c[j] * frequency + (c[j] > 0) * presence`` where ``c[j]`` counts token j
    in the output so far (OpenAI API reference, "Parameter details")."""

    def __init__(self, prompt_len: int, frequency: float, presence: float) -> None:
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_len :]  # (B, G)
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )  # (B, V)
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


@dataclass
class _Row:
    """Decoding state of one choice."""

    ids: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # where each token's text begins
    entries: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # decoded so far, up to any stop sequence
    sent: str = ""  # what the stream has been given
    logged: int = 0  # logprob entries given to the stream
    count: int = 0  # tokens generated, end-of-sequence included
    finish: FinishReason | None = None


class _Tracker(StoppingCriteria):
    """Stopping criterion that follows each row's text; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        rows: int,
        params: SamplingParams,
        recorder: _Recorder,
        emit: OnEvent | None,
        cancel: threading.Event | None,
    ) -> None:
        self.tok, self.eos = engine.tokenizer, set(engine.eos_ids)
        self.params, self.recorder, self.emit, self.cancel = params, recorder, emit, cancel
        self.rows = [_Row() for _ in range(rows)]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        tokens = input_ids[:, -1].tolist()
        prev = input_ids[:, -2].tolist()
        logp = self.recorder.last
        for r, row in enumerate(self.rows):
            if row.finish is None:
                self._add(r, row, tokens[r], prev[r], None if logp is None else logp[r])
        stop = self.cancel is not None and self.cancel.is_set()
        done = [stop or row.finish is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _add(self, r: int, row: _Row, token: int, prev: int, logp: torch.Tensor | None) -> None:
        row.count += 1
        if token in self.eos:
            self._finish(r, row, "stop")
            return
        stops = self.params.stop
        row.starts.append(len(row.text))
        row.ids.append(token)
        full = self.tok.decode(row.ids, skip_special_tokens=True)
        if logp is not None:
            row.entries.append(self._entry(full[row.starts[-1] :], token, prev, logp))
        cut = first_stop(full, stops)
        row.text = full if cut is None else full[:cut]
        if cut is not None:
            self._finish(r, row, "stop")
        elif row.count >= (self.params.max_tokens or 0):
            self._finish(r, row, "length")
        elif self.emit is not None:
            safe = len(full) - held_back(full, stops)
            while safe > len(row.sent) and full[safe - 1] == "\ufffd":
                safe -= 1  # half a UTF-8 character: wait for the rest
            self._send(r, row, full[:safe], None)

    def _entry(self, text: str, token: int, prev: int, logp: torch.Tensor) -> TokenLogprob:
        top: list[TopLogprob] = []
        if self.params.top_logprobs:
            values, idx = torch.topk(logp, self.params.top_logprobs)
            for v, i in zip(values.tolist(), idx.tolist(), strict=True):
                alt = self._piece(prev, i)
                top.append(TopLogprob(token=alt, logprob=v, bytes=list(alt.encode())))
        return TokenLogprob(
            token=text, logprob=float(logp[token]), bytes=list(text.encode()), top_logprobs=top
        )

    def _piece(self, prev: int, token: int) -> str:
        """A token's text as it reads after ``prev`` (keeps leading spaces that decoding
        a token alone would strip)."""
        before = self.tok.decode([prev], skip_special_tokens=True)
        return str(self.tok.decode([prev, token], skip_special_tokens=True))[len(before) :]

    def _finish(self, r: int, row: _Row, reason: FinishReason) -> None:
        row.finish = reason
        if self.emit is not None:
            self._send(r, row, row.text, reason)

    def _send(self, r: int, row: _Row, text: str, reason: FinishReason | None) -> None:
        assert self.emit is not None
        delta = text[len(row.sent) :] if text.startswith(row.sent) else ""
        keep = sum(1 for s in row.starts if s < len(text))
        entries = row.entries[row.logged : keep] if self.params.logprobs else None
        if delta or reason is not None or entries:
            row.sent = row.sent + delta
            row.logged = max(row.logged, keep)
            self.emit(Piece(r, delta, entries, reason))

    def finish(self) -> list[Choice]:
        """The choices once ``generate`` returned (rows still open ran out of tokens or
        were cancelled: ``"length"``)."""
        out = []
        for r, row in enumerate(self.rows):
            if row.finish is None:
                self._finish(r, row, "length")
            keep = sum(1 for s in row.starts if s < len(row.text))
            logprobs = row.entries[:keep] if self.params.logprobs else None
            out.append(Choice(row.text, row.finish or "length", row.count, logprobs))
        return out
