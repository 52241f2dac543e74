"""Score a model on probes; the base model's measurement is what later ones compare with.

Vocabulary log-probs are computed only at labelled positions (hidden states gathered
first, as in ``models/loss.py``), ``CHUNK`` positions at a time, so no (B, T, V) tensor
is ever built. The base measurement keeps what comparisons need: its greedy answers
(references of the agreement probe, continuations of the kl probe) and, per position of
the kl probe, its top-k next-token log-probs. It can be cached on disk
(:func:`cached_base_measurement`), keyed by :func:`base_key_parts`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tunelab.assets import cache_dir
from tunelab.data.batching import collate, eval_batches
from tunelab.data.token_cache import tokenizer_fingerprint
from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import TunelabError
from tunelab.evaluation.scoring import generate, label_logits
from tunelab.forgetting.probes import (
    SUITE_VERSION,
    Probe,
    SuiteSettings,
    exact_match,
    rouge_l,
    token_f1,
)
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel

__all__ = [
    "Measurement",
    "TopK",
    "base_key_parts",
    "cached_base_measurement",
    "coarse_kl",
    "coarse_logprobs",
    "measure",
    "topk_logprobs",
]

CHUNK = 512  # positions whose (CHUNK, V) fp32 log-probs exist at once
CACHE_FORMAT = "1"  # bump when the cached files change layout

# (indices int64 (P, k), log-probs fp32 (P, k + 1) with the rest bucket last,
#  offsets int64 (N + 1,)): item i owns positions offsets[i]:offsets[i + 1]
TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Measurement:
    """One model's scores on a list of probes.

    ``scores``: probe name → per-item score (probe item order). ``outputs``: greedy texts
    per generation probe (for the base: the agreement references and kl continuations).
    ``topk``: base only, per kl probe, its top-k log-probs along its answers (:data:`TopK`).
    """

    model: str
    scores: dict[str, list[float]]
    outputs: dict[str, list[str]] = field(default_factory=dict)
    topk: dict[str, TopK] = field(default_factory=dict)
    seconds: float = 0.0


def measure(
    model: TaskModel,
    tokenizer: Any,
    probes: Sequence[Probe],
    settings: SuiteSettings,
    *,
    base: Measurement | None,
    name: str | None = None,
) -> Measurement:
    """Score ``model`` on every probe. ``base=None``: this model is the base, and what
    comparisons need is recorded; otherwise agreement and kl probes compare with ``base``.

    ``name`` defaults to the model's ``name_or_path``. Train/eval mode is restored.
    """
    started = time.perf_counter()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = Measurement(name if name is not None else _model_name(model), {})
    greedy: dict[tuple[tuple[int, ...], ...], list[str]] = {}  # probes sharing prompts

    def answers(items: list[Encoded]) -> list[str]:
        key = tuple(tuple(e.input_ids[: e.prompt_len]) for e in items)
        if key not in greedy:
            greedy[key] = generate(
                model,
                tokenizer,
                items,
                max_new_tokens=settings.max_new_tokens,
                batch_size=settings.batch_size,
                precision=settings.precision,
            )
        return greedy[key]

    def score(probe: Probe) -> list[float]:
        if probe.metric == "nll":
            return _item_nll(model, probe.items, settings, pad)
        if probe.metric == "accuracy":
            return _accuracy(model, probe, settings, pad)
        if probe.metric in ("match_f1", "rougeL", "exact_match"):
            texts = out.outputs[probe.name] = answers(probe.items)
            return _text_scores(probe, texts)
        if probe.metric == "agreement":
            texts = out.outputs[probe.name] = answers(probe.items)
            return rouge_l(texts, texts if base is None else _base_part(base, probe, "outputs"))
        if probe.metric != "kl":
            raise TunelabError(f"probe '{probe.name}' has an unknown metric {probe.metric!r}")
        if base is None:  # the base itself: record its answers and top-k; KL(base ‖ base) = 0
            texts = out.outputs[probe.name] = answers(probe.items)
            items = _with_answers(probe.items, texts, tokenizer)
            out.topk[probe.name] = _base_topk(model, items, settings, pad)
            return [0.0] * len(items)
        items = _with_answers(probe.items, _base_part(base, probe, "outputs"), tokenizer)
        return _item_kl(model, items, _base_part(base, probe, "topk"), settings, pad)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for probe in probes:
                out.scores[probe.name] = score(probe)
    finally:
        model.train(was_training)
    out.seconds = round(time.perf_counter() - started, 3)
    return out


def topk_logprobs(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row of log-probs (N, V): indices (N, k') int64 and the coarsened
    log-probs (N, k' + 1) of :func:`coarse_logprobs`, with k' = min(k, V)."""
    indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1).indices
    return indices, coarse_logprobs(logprobs, indices)


def coarse_logprobs(logprobs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Log-probs (N, V) coarsened to {each of ``indices`` (N, k), one rest bucket}: (N, k + 1).

    The rest bucket is logsumexp over the tokens not in ``indices`` (computed directly, not
    as log(1 - Σ top-k), which cancels catastrophically when the top-k hold nearly all
    the mass); -inf when ``indices`` cover the vocabulary.
    """
    top = logprobs.gather(-1, indices)  # (N, k)
    rest = logprobs.scatter(-1, indices, float("-inf")).logsumexp(dim=-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


def coarse_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_j p_j (log p_j - log q_j) per row of (N, C) log-probs: (N,), >= 0.

    On distributions coarsened to {top-k of p, rest} this is a lower bound of the
    full-vocabulary KL (data-processing inequality: merging outcomes cannot increase a
    KL divergence; Cover & Thomas, *Elements of Information Theory*, Thm 2.8.1), equal to
    it when k covers the vocabulary. Buckets with p_j = 0 contribute 0. Identical inputs
    give exactly 0.
    """
    p = p_logprobs.exp()
    terms = torch.where(p > 0, p * (p_logprobs - q_logprobs), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp(min=0.0)


def base_key_parts(
    model_fingerprint: str, probes: Sequence[Probe], settings: SuiteSettings, tokenizer: Any
) -> list[str]:
    """Cache key parts of a base measurement: the model, suite version, a hash of every
    probe's items and references (the data differ between Python versions), the
    settings and the tokenizer."""
    digest = hashlib.sha256()
    for probe in probes:
        items = [[e.prompt_len, *e.input_ids] for e in probe.items]
        record = [probe.name, probe.metric, items, list(probe.references), probe.label_ids]
        digest.update(json.dumps(record).encode())
    return [
        model_fingerprint,
        SUITE_VERSION,
        digest.hexdigest()[:16],
        json.dumps(asdict(settings), sort_keys=True),
        tokenizer_fingerprint(tokenizer),
    ]


def cached_base_measurement(
    key_parts: Sequence[str], compute: Callable[[], Measurement]
) -> tuple[Measurement, bool]:
    """The base measurement for ``key_parts`` from ``$TUNELAB_CACHE/retention``, computed
    and stored on a miss; and whether it came from the cache.

    An entry is ``<key>.json`` (model, seconds, scores, outputs) and ``<key>.safetensors``
    (top-k tensors), each written to a temporary file and renamed; the JSON goes last and
    also records the key parts, so a half-written or colliding entry is recomputed.
    """
    parts = [CACHE_FORMAT, *key_parts]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    folder = cache_dir("retention")
    meta_path, tensor_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    if meta_path.is_file():
        try:
            return _load(meta_path, tensor_path, parts), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged or colliding entry: rebuilt below
    result = compute()
    tensors = {
        f"{name}.{kind}": t.contiguous()
        for name, topk in result.topk.items()
        for kind, t in zip(("indices", "logprobs", "offsets"), topk, strict=True)
    }
    suffix = f".tmp-{os.getpid()}"
    save_file(tensors, str(tensor_path) + suffix)
    os.replace(str(tensor_path) + suffix, tensor_path)
    meta = {
        "key_parts": parts,
        "model": result.model,
        "seconds": result.seconds,
        "scores": result.scores,
        "outputs": result.outputs,
        "topk": sorted(result.topk),
    }
    with open(str(meta_path) + suffix, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    os.replace(str(meta_path) + suffix, meta_path)
    return result, False


def _load(
    meta_path: os.PathLike[str], tensor_path: os.PathLike[str], parts: list[str]
) -> Measurement:
    with open(meta_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta["key_parts"] != parts:
        raise ValueError("cache key collision")
    tensors = load_file(tensor_path)
    topk = {
        n: (tensors[f"{n}.indices"], tensors[f"{n}.logprobs"], tensors[f"{n}.offsets"])
        for n in meta["topk"]
    }
    return Measurement(meta["model"], meta["scores"], meta["outputs"], topk, meta["seconds"])


def _model_name(model: TaskModel) -> str:
    return str(getattr(model.lm, "name_or_path", "") or type(model.lm).__name__)


def _base_part(base: Measurement, probe: Probe, what: str) -> Any:
    """``base.outputs`` / ``base.topk`` of ``probe``, checked to belong to the same items."""
    found = getattr(base, what).get(probe.name)
    n = len(base.scores.get(probe.name, []))
    if found is None or n != len(probe.items):
        raise TunelabError(
            f"the base measurement has no {what} for probe '{probe.name}' with "
            f"{len(probe.items)} items (it has {n})",
            hint="measure the base with base=None on the same probes and settings",
        )
    return found


def _with_answers(
    items: Sequence[Encoded], answers: Sequence[str], tokenizer: Any
) -> list[Encoded]:
    """Prompt + answer + EOS tokens: the sequence along which kl compares the models."""
    eos = tokenizer.eos_token or ""
    out = []
    for item, text in zip(items, answers, strict=True):
        ids = tokenizer(text + eos, add_special_tokens=False)["input_ids"]
        out.append(Encoded(item.input_ids[: item.prompt_len] + list(ids), item.prompt_len))
    return out


def _positions(items: Sequence[Encoded], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the positions of :func:`_logprob_chunks` go: offsets (N + 1,) of each item's
    positions in item order, and the item-order slot of each position in stream order (P,).

    Item i has length - max(prompt_len, 1) positions (token 0 is never a target).
    """
    counts = torch.tensor([e.length - max(e.prompt_len, 1) for e in items])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    order = [i for idx in eval_batches([e.length for e in items], batch_size) for i in idx]
    slots = [torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in order]
    return offsets, torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long)


def _logprob_chunks(
    model: TaskModel, items: Sequence[Encoded], settings: SuiteSettings, pad_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Next-token log-probs (n, V) fp32 and targets (n,) at labelled positions, in stream
    order (eval batches, row-major), ``CHUNK`` positions at a time; on CPU."""
    device = next(model.parameters()).device
    for idx in eval_batches([e.length for e in items], settings.batch_size):
        batch = collate([items[i] for i in idx], pad_id)
        targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at t
        selected = targets != IGNORE
        with autocast(settings.precision, device):
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            hidden = model.hidden(ids, mask)[:, :-1][selected.to(device)]  # (N, H)
        wanted = targets[selected]  # (N,)
        for start in range(0, hidden.shape[0], CHUNK):
            with autocast(settings.precision, device):
                logits = model.lm_head(hidden[start : start + CHUNK]).float()  # (n, V)
            yield F.log_softmax(logits, dim=-1).cpu(), wanted[start : start + CHUNK]


def _per_item_mean(values: torch.Tensor, offsets: torch.Tensor) -> list[float]:
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), values.double().cumsum(0)])
    counts = (offsets[1:] - offsets[:-1]).double()
    return ((sums[offsets[1:]] - sums[offsets[:-1]]) / counts).tolist()


def _item_nll(
    model: TaskModel, items: Sequence[Encoded], settings: SuiteSettings, pad_id: int
) -> list[float]:
    """Mean NLL per response token of each item (nats)."""
    offsets, slots = _positions(items, settings.batch_size)
    nll = torch.empty(len(slots))
    cursor = 0
    for logp, target in _logprob_chunks(model, items, settings, pad_id):
        n = len(target)
        nll[slots[cursor : cursor + n]] = -logp.gather(1, target[:, None])[:, 0]
        cursor += n
    return _per_item_mean(nll, offsets)


def _base_topk(
    model: TaskModel, items: Sequence[Encoded], settings: SuiteSettings, pad_id: int
) -> TopK:
    offsets, slots = _positions(items, settings.batch_size)
    indices = logprobs = torch.empty(0)
    cursor = 0
    for logp, _ in _logprob_chunks(model, items, settings, pad_id):
        top, coarse = topk_logprobs(logp, settings.kl_top_k)
        if cursor == 0:
            indices = torch.empty(len(slots), top.shape[1], dtype=torch.long)
            logprobs = torch.empty(len(slots), coarse.shape[1])
        indices[slots[cursor : cursor + len(top)]] = top
        logprobs[slots[cursor : cursor + len(top)]] = coarse
        cursor += len(top)
    return indices, logprobs, offsets


def _item_kl(
    model: TaskModel,
    items: Sequence[Encoded],
    topk: TopK,
    settings: SuiteSettings,
    pad_id: int,
) -> list[float]:
    """Mean over each item's positions of KL(base ‖ tested) on the base's top-k + rest."""
    base_indices, base_logprobs, base_offsets = topk
    offsets, slots = _positions(items, settings.batch_size)
    if not torch.equal(offsets, base_offsets):
        raise TunelabError(
            "the kl probe's items do not line up with the base measurement's top-k",
            hint="measure the base again with the same tokenizer, probes and settings",
        )
    kl = torch.empty(len(slots))
    cursor = 0
    for logp, _ in _logprob_chunks(model, items, settings, pad_id):
        where = slots[cursor : cursor + len(logp)]
        q = coarse_logprobs(logp, base_indices[where])
        kl[where] = coarse_kl(base_logprobs[where], q)
        cursor += len(logp)
    return _per_item_mean(kl, offsets)


def _accuracy(model: TaskModel, probe: Probe, settings: SuiteSettings, pad_id: int) -> list[float]:
    if probe.label_ids is None:
        raise TunelabError(f"accuracy probe '{probe.name}' has no label_ids")
    scores = label_logits(
        model,
        probe.items,
        probe.label_ids,
        pad_id=pad_id,
        batch_size=settings.batch_size,
        precision=settings.precision,
    )  # (N, C)
    predicted = scores.argmax(dim=-1).tolist()
    return [float(p == e.class_index) for p, e in zip(predicted, probe.items, strict=True)]


def _text_scores(probe: Probe, texts: list[str]) -> list[float]:
    refs = list(probe.references)
    if len(refs) != len(texts):
        raise TunelabError(
            f"probe '{probe.name}' has {len(refs)} references for {len(texts)} items"
        )
    if probe.metric == "rougeL":
        return rouge_l(texts, refs)
    score = token_f1 if probe.metric == "match_f1" else exact_match
    return [score(t, r) for t, r in zip(texts, refs, strict=True)]
