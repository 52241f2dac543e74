"""Decoding hooks: what ``model.lm.generate`` is given to follow each row of a request.

- :class:`Recorder`, the first logits processor, keeps the log-softmax of the raw logits of
  each step (before penalties, temperature and top-p) when logprobs are asked for;
- :class:`Penalties`, OpenAI's frequency and presence penalties;
- :class:`Tracker`, a stopping criterion, sees every new token of every row: it decodes the
  text, cuts it at the first stop sequence, counts tokens, marks each row finished
  (``"stop"``: end-of-sequence token or stop sequence; ``"length"``: ``max_tokens`` reached)
  and, when streaming, hands each new piece of text (a :class:`Piece`) to ``emit`` from the
  worker thread. Text that could still become a stop sequence (or half a UTF-8 character)
  is held back until it cannot (:func:`held_back`).

Also the request's decoding settings (:class:`SamplingParams`) and what a decode yields
(:class:`Choice`). The engine (:mod:`tunelab.serving.engine`) wires them into ``generate``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from tunelab.serving.schemas import FinishReason, TokenLogprob, TopLogprob

__all__ = [
    "Choice",
    "OnPiece",
    "Penalties",
    "Piece",
    "Recorder",
    "SamplingParams",
    "Tracker",
    "fan_out",
    "first_stop",
    "held_back",
]


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


@dataclass(frozen=True)
class Piece:
    """Stream event: new text of choice ``index``; ``finish_reason`` set on its last piece."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None


OnPiece = Callable[[Piece], None]


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


def fan_out(emit: OnPiece, n: int) -> OnPiece:
    """Repeat every piece of choice 0 for choices 1..n-1 (greedy: one decode, n choices)."""

    def each(piece: Piece) -> None:
        for i in range(n):
            emit(replace(piece, index=i))

    return each


class Recorder(LogitsProcessor):
    """First logits processor: keeps log-softmax of the raw logits of the latest step."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.last: torch.Tensor | None = None  # (B, V)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class Penalties(LogitsProcessor):
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


class Tracker(StoppingCriteria):
    """Stopping criterion that follows each row's text; see the module docstring."""

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: Sequence[int],
        rows: int,
        params: SamplingParams,
        recorder: Recorder,
        emit: OnPiece | None,
        cancel: threading.Event | None,
    ) -> None:
        self.tok, self.eos = tokenizer, set(eos_ids)
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
