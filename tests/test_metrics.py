"""Metrics: hand-computed cases, independent references (sklearn, sacrebleu, rouge-score)
and the registry contract every metric must meet."""

from __future__ import annotations

import json
import math
import random

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.metrics import METRICS, compute_metrics, get_metric, perplexity
from tunelab.evaluation.metrics.exact_match import ExactMatch

LABELS = ["neg", "neu", "pos"]
REFS = ["pos", "pos", "pos", "neg", "neg", "neu"]
PREDS = ["pos", "neg", "neg", "neg", "pos", "pos"]
# Hand-computed confusion matrix for REFS/PREDS (rows = reference, columns = prediction):
#   neg: [1, 0, 1]   neu: [0, 0, 1]   pos: [2, 0, 1]
# neg: P = 1/3, R = 1/2, F1 = 2/5;  neu: P = R = F1 = 0;  pos: P = R = F1 = 1/3.
MATRIX = [[1, 0, 1], [0, 0, 1], [2, 0, 1]]


def test_accuracy_hand_computed_and_sklearn() -> None:
    result = get_metric("accuracy").compute(PREDS, REFS, LABELS)
    assert result == {"accuracy": pytest.approx(2 / 6)}  # hand: items 0 and 3 are right
    assert result["accuracy"] == pytest.approx(accuracy_score(REFS, PREDS))


def test_f1_hand_computed_and_sklearn() -> None:
    result = get_metric("f1").compute(PREDS, REFS, LABELS)
    assert result["f1_macro"] == pytest.approx((2 / 5 + 0 + 1 / 3) / 3)  # hand: 11/45
    assert result["f1_micro"] == pytest.approx(2 / 6)  # hand: equals accuracy here
    ref = {"labels": LABELS, "zero_division": 0}
    assert result["f1_macro"] == pytest.approx(f1_score(REFS, PREDS, average="macro", **ref))
    assert result["f1_micro"] == pytest.approx(f1_score(REFS, PREDS, average="micro", **ref))


def test_per_class_scores_and_confusion_matrix() -> None:
    result = get_metric("f1").compute(PREDS, REFS, LABELS)
    per_class = result["per_class"]
    assert per_class["neg"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5, "support": 2}
    )
    assert per_class["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_class["pos"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3, "support": 3}
    )
    assert result["confusion_matrix"] == {"labels": LABELS, "matrix": MATRIX}


def test_f1_on_a_larger_random_case_matches_sklearn() -> None:
    rng = random.Random(0)
    labels = ["a", "b", "c", "d", "e"]  # "e" never occurs: a zero row and column
    refs = [rng.choice(labels[:4]) for _ in range(300)]
    preds = [r if rng.random() < 0.6 else rng.choice([*labels, "other"]) for r in refs]
    result = get_metric("f1").compute(preds, refs, labels)
    for average in ("macro", "micro"):
        expected = f1_score(refs, preds, labels=labels, average=average, zero_division=0)
        assert result[f"f1_{average}"] == pytest.approx(expected)


def test_confusion_matrix_metric_matches_sklearn() -> None:
    preds = [*PREDS, "maybe"]  # out of the labels: no column, as in sklearn with labels=
    refs = [*REFS, "neu"]
    result = get_metric("confusion_matrix").compute(preds, refs, LABELS)
    expected = confusion_matrix(refs, preds, labels=LABELS).tolist()
    assert result == {"confusion_matrix": {"labels": LABELS, "matrix": expected}}
    assert expected == MATRIX  # the extra example adds to no cell
    assert (
        result["confusion_matrix"]
        == get_metric("f1").compute(preds, refs, LABELS)["confusion_matrix"]
    )


def test_macro_precision_and_recall_hand_computed_and_sklearn() -> None:
    p = get_metric("precision").compute(PREDS, REFS, LABELS)["precision_macro"]
    r = get_metric("recall").compute(PREDS, REFS, LABELS)["recall_macro"]
    assert p == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)  # hand: 2/9
    assert r == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)  # hand: 5/18
    ref = {"labels": LABELS, "average": "macro", "zero_division": 0}
    assert p == pytest.approx(precision_score(REFS, PREDS, **ref))
    assert r == pytest.approx(recall_score(REFS, PREDS, **ref))


def test_prediction_outside_labels_counts_as_wrong() -> None:
    refs, preds, labels = ["a", "b"], ["a", "maybe"], ["a", "b"]
    result = compute_metrics(["accuracy", "f1"], preds, refs, labels)
    assert result["accuracy"] == 0.5
    assert result["f1_macro"] == pytest.approx(0.5)  # hand: a -> 1, b -> 0
    assert result["f1_micro"] == pytest.approx(2 / 3)  # hand: P = 1/1, R = 1/2
    sk_micro = f1_score(refs, preds, labels=labels, average="micro")
    assert result["f1_micro"] == pytest.approx(sk_micro)
    assert result["confusion_matrix"]["matrix"] == [[1, 0], [0, 0]]


def test_labels_default_to_sorted_references() -> None:
    result = get_metric("f1").compute(["y", "x"], ["x", "y"])
    assert result["confusion_matrix"] == {"labels": ["x", "y"], "matrix": [[0, 1], [1, 0]]}


@pytest.mark.parametrize("labels", [["pos", "neg"], ["neg", "neu", "pos", "neg"]])
def test_bad_label_list_raises_data_error(labels: list[str]) -> None:
    with pytest.raises(DataError):
        get_metric("f1").compute(PREDS, REFS, labels)


def test_exact_match_normalisation() -> None:
    refs = ["Paris", "New York", "Rome"]
    preds = ["  Paris\n", "New  York", "rome"]
    # hand: only "  Paris\n" matches after stripping; inner spaces and case are kept
    assert get_metric("exact_match").compute(preds, refs) == {"exact_match": pytest.approx(1 / 3)}
    folded = ExactMatch(case_fold=True).compute(preds, refs)
    assert folded == {"exact_match": pytest.approx(2 / 3)}  # hand: "rome" matches too


def test_bleu_matches_sacrebleu() -> None:
    refs = ["the cat sat on the mat today", "a quick brown fox jumps over the dog"]
    preds = ["the cat sat on a mat today", "a quick brown fox jumped over the lazy dog"]
    expected = sacrebleu.corpus_bleu(preds, [refs]).score
    assert get_metric("bleu").compute(preds, refs) == {"bleu": pytest.approx(expected)}
    assert 0 < expected < 100
    assert get_metric("bleu").compute(refs, refs)["bleu"] == pytest.approx(100.0)


def test_chrf_matches_sacrebleu() -> None:
    refs = ["the cat sat on the mat today", "a quick brown fox jumps over the dog"]
    preds = ["the cat sat on a mat today", "a quick brown fox jumped over the lazy dog"]
    expected = sacrebleu.corpus_chrf(preds, [refs]).score
    assert get_metric("chrf").compute(preds, refs) == {"chrf": expected}
    assert 0 < expected < 100
    assert get_metric("chrf").compute(refs, refs)["chrf"] == pytest.approx(100.0)


def test_rouge_hand_computed_and_rouge_score() -> None:
    # hand: 3 of 6 reference unigrams, 2 of 5 bigrams, LCS 3 -> F = 2/3, 4/7, 2/3
    result = get_metric("rouge").compute(["the cat sat"], ["the cat sat on the mat"])
    # one line: the summary-level LCS is the LCS, so rougeLsum = rougeL
    expected = {"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3, "rougeLsum": 2 / 3}
    assert result == pytest.approx(expected)

    preds = ["the cats are running home", "dogs bark loudly at night", "Generalizations abound"]
    refs = ["the cat is running home", "a dog barked at night", "generalized abounding"]
    assert get_metric("rouge").compute(preds, refs) == pytest.approx(_rouge_score(preds, refs))


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _rouge_score(preds: list[str], refs: list[str]) -> dict[str, float]:
    """The reference: rouge-score's own scorer and tokenizer, averaged over examples."""
    scorer = RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in ROUGE_KEYS}


def test_rouge_lsum_splits_on_newlines() -> None:
    # Two sentences in swapped order: the whole-text LCS can follow only one of them, the
    # summary-level LCS matches each reference sentence against every predicted sentence.
    refs = ["the cat sat on the mat\nthe dog ran in the park"]
    preds = ["the dog ran in the park\nthe cat sat on the mat"]
    result = get_metric("rouge").compute(preds, refs)
    assert result == pytest.approx(_rouge_score(preds, refs))
    assert result["rougeLsum"] == pytest.approx(1.0)  # hand: every sentence recovered whole
    assert result["rougeL"] == pytest.approx(6 / 12)  # hand: LCS is one 6-token sentence
    assert result["rougeLsum"] != pytest.approx(result["rougeL"])
    one_line = [[text.replace("\n", " ") for text in texts] for texts in (preds, refs)]
    flat = get_metric("rouge").compute(*one_line)
    assert flat["rougeLsum"] == pytest.approx(flat["rougeL"])  # one line: nothing to split


def test_perplexity() -> None:
    assert perplexity(4 * math.log(2), 4) == pytest.approx(2.0)  # exp(ln 2) = 2
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(1e6, 1) == math.inf
    for nll, count in [(1.0, 0), (-1.0, 3), (math.nan, 3)]:
        with pytest.raises(DataError):
            perplexity(nll, count)


# --- registry contract: every registered metric, no per-metric code ---

PERFECT = ["the cat sat on the mat", "a dog ran in the park", "the cat sat on the mat"]
MAXIMUM = {"bleu": 100.0, "chrf": 100.0}  # every other top-level score is on a 0-1 scale
NO_SCALAR = {"confusion_matrix"}  # metrics whose output is a table only


@pytest.mark.parametrize("key", sorted(METRICS))
def test_registry_contract(key: str) -> None:
    metric = METRICS[key]
    assert metric.name == key
    assert metric.task in ("classification", "generation")
    result = metric.compute(PERFECT, PERFECT, sorted(set(PERFECT)))
    json.dumps(result)  # plain Python values only
    assert result, f"{key} returned nothing"
    scores = {k: v for k, v in result.items() if isinstance(v, float | int)}
    assert bool(scores) is (key not in NO_SCALAR), f"{key}: top-level scores {sorted(scores)}"
    for name, value in scores.items():
        assert type(value) is float, name
        assert value == pytest.approx(MAXIMUM.get(key, 1.0)), name


@pytest.mark.parametrize("key", sorted(METRICS))
@pytest.mark.parametrize(("preds", "refs"), [([], []), (["a"], ["a", "b"])])
def test_empty_or_mismatched_inputs_raise_data_error(
    key: str, preds: list[str], refs: list[str]
) -> None:
    with pytest.raises(DataError):
        METRICS[key].compute(preds, refs, ["a", "b"])


def test_unknown_metric_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown metric 'acuracy'") as info:
        compute_metrics(["accuracy", "acuracy"], ["a"], ["a"])
    assert all(name in str(info.value) for name in METRICS)


def test_compute_metrics_merges_outputs() -> None:
    result = compute_metrics(["accuracy", "precision", "recall"], PREDS, REFS, LABELS)
    assert set(result) == {"accuracy", "precision_macro", "recall_macro"}
