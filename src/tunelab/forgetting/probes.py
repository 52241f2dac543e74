"""Probes: items to score and how to score them; the ``general`` suite of six probes.

A probe's per-item score is one of these metrics:

- ``nll``: mean negative log-likelihood (nats per token) of the item's response tokens
  given its prompt. Lower is better; exp(mean) is the perplexity.
- ``match_f1``: SQuAD token F1 (Rajpurkar et al., 2016) of the greedy answer vs the
  reference: both lowercased, punctuation and the articles a/an/the removed, split on
  whitespace; F1 = 2PR / (P + R) over the multiset of shared tokens.
- ``rougeL``: ROUGE-L F-measure (Lin, 2004; rouge-score, Porter stemmer) of the greedy
  answer vs the reference.
- ``exact_match``: 1 if the greedy answer equals the reference after stripping whitespace.
- ``accuracy``: 1 if the highest-scoring label (label-word scoring) is the item's label.
- ``agreement``: ROUGE-L F of the greedy answer vs the *base model's* greedy answer (1 when
  identical); the base scores 1.0 by construction.
- ``kl``: KL(base ‖ tested) of next-token distributions along the base's greedy answer,
  averaged over its positions (see :mod:`tunelab.forgetting.measure`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from tunelab.data.tokenize import Encoded, PromptFormatter, encode, label_token_ids
from tunelab.data.types import Example
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.metrics.exact_match import normalise
from tunelab.forgetting.general import (
    GENERAL_VERSION,
    chat_examples,
    general_prompts,
    prose_texts,
    qa_examples,
)

__all__ = [
    "GENERATION_METRICS",
    "HIGHER_IS_BETTER",
    "SUITE_VERSION",
    "Metric",
    "Probe",
    "SuiteSettings",
    "exact_match",
    "general_suite",
    "rouge_l",
    "token_f1",
    "user_probe",
]

SUITE_VERSION = f"general-{GENERAL_VERSION}.1"

Metric = Literal["nll", "match_f1", "kl", "agreement", "accuracy", "rougeL", "exact_match"]
METRICS: tuple[str, ...] = get_args(Metric)
GENERATION_METRICS = frozenset({"match_f1", "rougeL", "exact_match", "agreement"})
HIGHER_IS_BETTER: dict[str, bool] = {
    "nll": False,
    "kl": False,
    "match_f1": True,
    "agreement": True,
    "accuracy": True,
    "rougeL": True,
    "exact_match": True,
}


@dataclass(frozen=True)
class Probe:
    """Items to score and the metric that scores them.

    ``items``: nll and accuracy items hold prompt + reference response tokens; generation,
    agreement and kl items hold the prompt only (the kl probe appends the base's answer).
    ``references``: one text per item for match_f1 / rougeL / exact_match.
    ``label_ids``: accuracy only, the token ids of each label word (class order).
    """

    name: str
    metric: Metric
    items: list[Encoded]
    references: Sequence[str] = ()
    label_ids: list[list[int]] | None = None
    description: str = ""


@dataclass(frozen=True)
class SuiteSettings:
    """How big and how precise a retention measurement is (all part of the base cache key)."""

    max_examples: int = 48  # items per probe
    max_length: int = 128  # tokens per item (prompt + reference)
    max_new_tokens: int = 32  # greedy tokens for generation probes
    batch_size: int = 16
    precision: str = "fp32"
    kl_top_k: int = 64  # base next-token log-probs stored per position for drift_kl
    seed: int = 0  # which items are sampled


def general_suite(
    tokenizer: Any, settings: SuiteSettings, *, use_chat_template: str = "auto"
) -> list[Probe]:
    """The six probes of the general suite, from the ``probe`` part of the general data.

    qa_loglik / qa_match share one sample of ChatterBot questions and instruct_rougeL /
    drift_kl one sample of open prompts (half ChatterBot, half chit-chat openings).
    """
    fmt = PromptFormatter(tokenizer, use_chat_template)
    n, seed = settings.max_examples, settings.seed

    def enc(examples: list[Example]) -> list[Encoded]:
        return [encode(tokenizer, fmt, ex, max_length=settings.max_length) for ex in examples]

    qa = _sample(qa_examples("probe"), n, [seed, 1])
    prose = [
        Example(({"role": "user", "content": ""},), text, None, f"prose#{i:05d}", raw=True)
        for i, text in enumerate(prose_texts("probe"))
    ]  # ordered by topic, so the index is a stable sort key
    prose = _sample(prose, n, [seed, 2])
    chat = _sample(chat_examples("probe"), n, [seed, 3])
    prompts = _sample(general_prompts("probe"), n, [seed, 4], stratify=True)
    qa_prompts = [e.prompt_only() for e in enc(qa)]
    open_prompts = [e.prompt_only() for e in enc(prompts)]
    return [
        Probe(
            "qa_loglik",
            "nll",
            enc(qa),
            description="NLL/token of ChatterBot answers given the question",
        ),
        Probe(
            "qa_match",
            "match_f1",
            qa_prompts,
            [ex.response for ex in qa],
            description="token F1 of greedy answers to ChatterBot questions",
        ),
        Probe(
            "prose_ppl",
            "nll",
            enc(prose),
            description="NLL/token of Python-reference paragraphs (raw text)",
        ),
        Probe(
            "chat_ppl",
            "nll",
            enc(chat),
            description="NLL/token of the next chit-chat turn given up to 2 turns",
        ),
        Probe(
            "instruct_rougeL",
            "agreement",
            open_prompts,
            description="ROUGE-L F of greedy answers vs the base model's answers",
        ),
        Probe(
            "drift_kl",
            "kl",
            open_prompts,
            description=f"KL(base || tuned) along base answers, top-{settings.kl_top_k}",
        ),
    ]


def user_probe(
    name: str,
    examples: Sequence[Example],
    metric: Metric,
    tokenizer: Any,
    settings: SuiteSettings,
    labels: Sequence[str] | None = None,
    label_words: Sequence[str] | None = None,
    use_chat_template: str = "auto",
) -> Probe:
    """A probe over the caller's examples (a seeded sample of at most ``max_examples``).

    ``accuracy`` scores classification by label words: ``labels`` is the class order
    (default: the sorted labels of the examples), ``label_words`` the word the model says
    for each (default: the labels themselves). Every example needs a ``label``.
    """
    if metric not in METRICS:
        raise ConfigError(
            f"probe '{name}': unknown metric {metric!r}", hint=f"use one of {', '.join(METRICS)}"
        )
    if not examples:
        raise DataError(f"probe '{name}' has no examples")
    fmt = PromptFormatter(tokenizer, use_chat_template)
    chosen = _sample(list(examples), settings.max_examples, [settings.seed, 5])
    if metric == "accuracy":
        missing = [ex.origin for ex in chosen if ex.label is None]
        if missing:
            raise DataError(
                f"probe '{name}' scores accuracy but {len(missing)} examples have no label "
                f"(first: {missing[0]})",
                hint="use classification data, or another metric",
            )
        labels = list(labels) if labels is not None else sorted({str(ex.label) for ex in chosen})
        unknown = sorted({str(ex.label) for ex in chosen} - set(labels))
        if unknown:
            raise DataError(f"probe '{name}': labels {unknown} are not in {labels}")
        words = list(label_words) if label_words is not None else labels
        items = [
            encode(tokenizer, fmt, ex, max_length=settings.max_length, labels=labels)
            for ex in chosen
        ]
        return Probe(
            name,
            metric,
            items,
            label_ids=label_token_ids(tokenizer, words),
            description=f"accuracy over labels {', '.join(labels)}",
        )
    items = [encode(tokenizer, fmt, ex, max_length=settings.max_length) for ex in chosen]
    if metric == "nll":
        empty = [ex.origin for ex, e in zip(chosen, items, strict=True) if e.length < 2]
        if empty:
            raise DataError(
                f"probe '{name}': {len(empty)} examples have no token to score (first: {empty[0]})",
                hint="give every example a prompt or a response",
            )
        return Probe(name, metric, items, description="NLL/token of the reference responses")
    references = [ex.response for ex in chosen] if metric in GENERATION_METRICS else []
    return Probe(
        name,
        metric,
        [e.prompt_only() for e in items],
        references,
        description=f"{metric} of greedy answers",
    )


def _sample(
    examples: list[Example], n: int, seed: list[int], *, stratify: bool = False
) -> list[Example]:
    """``n`` examples without replacement, in origin order; pure in (examples, n, seed).

    ``stratify``: equal quotas per source (the origin up to its first ':'), the remainder
    to the first sources; a source short of its quota gives its slack to the others.
    """
    pool = sorted(examples, key=lambda ex: ex.origin)
    if len(pool) <= n:
        return pool
    rng = np.random.default_rng(seed)
    if not stratify:
        return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False).tolist())]
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(pool):
        groups.setdefault(ex.origin.split(":", 1)[0], []).append(i)
    order = sorted(groups, key=lambda g: len(groups[g]))  # smallest first: slack flows on
    chosen: list[int] = []
    for k, group in enumerate(order):
        quota = (n - len(chosen)) // (len(order) - k)
        members = groups[group]
        take = min(quota, len(members))
        chosen.extend(members[i] for i in rng.choice(len(members), take, replace=False).tolist())
    return [pool[i] for i in sorted(chosen)]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _squad_tokens(text: str) -> list[str]:
    """SQuAD v1.1 answer normalisation: lowercase, drop punctuation, articles, extra space."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: shared = |tokens(pred) ∩ tokens(ref)| (multisets), P = shared/|pred|,
    R = shared/|ref|, F1 = 2PR/(P+R). Both empty: 1.0; one empty: 0.0."""
    pred, ref = _squad_tokens(prediction), _squad_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    shared = sum((Counter(pred) & Counter(ref)).values())
    if shared == 0:
        return 0.0
    p, r = shared / len(pred), shared / len(ref)
    return 2 * p * r / (p + r)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the texts are equal after stripping whitespace (case-sensitive), else 0.0."""
    return float(normalise(prediction) == normalise(reference))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-pair ROUGE-L F (rouge-score, Porter stemmer); identical texts score 1.0 even
    when the package's ASCII tokenizer finds no tokens in them."""
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk: seconds, so lazily

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return [
        1.0 if p == r else float(scorer.score(target=r, prediction=p)["rougeL"].fmeasure)
        for p, r in zip(predictions, references, strict=True)
    ]
