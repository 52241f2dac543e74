"""The parts of ``results.json`` that judge a model on the test split: the evaluation of
one model (``base``, ``tuned``), the compare table and the calibration.

The evaluation layer computes them as plain dicts (:func:`tunelab.evaluation.evaluate.score`,
:func:`tunelab.evaluation.compare.compare_row`,
:func:`tunelab.evaluation.calibration.calibration_report`); the recipe stage that runs it
validates the dict into its part here, so what reaches ``results.json`` has one checked shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Calibration",
    "CalibrationSummary",
    "ClassScores",
    "CompareRow",
    "CompareTable",
    "ConfusionMatrix",
    "Evaluation",
    "Interval",
    "Part",
    "Reliability",
    "ReliabilityBin",
    "Sample",
    "SplitEvaluation",
]

# a 95% interval [lo, hi]; None where it is undefined (no finite bootstrap replicate)
Interval = tuple[float | None, float | None]


class Part(BaseModel):
    """A part of results.json whose shape is tunelab's own: unknown keys are errors.

    NaN and infinities are written as JSON's ``NaN``/``Infinity`` (what ``json.dumps``
    writes), so a value that is not finite survives a round trip.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this part (tuples become lists; NaN stays NaN)."""
        return self.model_dump(mode="json")


class Sample(Part):
    """One prediction kept for people to read."""

    prompt: str = Field(description="The last user turn (first 300 characters).")
    prediction: str
    reference: str
    correct: bool | None = Field(
        None, description="prediction == reference, both stripped; None in older files."
    )
    confidence: float | None = Field(
        None, description="Max class probability at the temperature; label-scored tasks only."
    )


class ClassScores(Part):
    precision: float
    recall: float
    f1: float
    support: int


class ConfusionMatrix(Part):
    labels: list[str]
    matrix: list[list[int]] = Field(description="Rows: reference label; columns: predicted.")


_TABLES = ("per_class", "confusion_matrix")  # the metrics that are tables, not numbers


class Evaluation(Part):
    """One model on the test split: task metrics with 95% intervals and a few samples."""

    n: int = Field(description="Examples scored.")
    metrics: dict[str, float] = Field(description="Scalar task metrics by name.")
    ci95: dict[str, Interval] = Field(
        default_factory=dict, description="Bootstrap 95% interval of each metric."
    )
    per_class: dict[str, ClassScores] | None = Field(
        None, description="Precision, recall, F1 and support per label (with the f1 metric)."
    )
    confusion_matrix: ConfusionMatrix | None = None
    seconds: float | None = Field(None, description="Time of the model calls.")
    prompt_tokens: float | None = Field(None, description="Mean prompt tokens per request.")
    temperature: float | None = Field(
        None, description="Temperature of the sample confidences; label-scored tasks only."
    )
    samples: list[Sample] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _tables_out_of_metrics(cls, data: Any) -> Any:
        """The evaluation layer (and results.json before typed results) keeps the per-class
        table and the confusion matrix among the metrics; here they are fields."""
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            metrics = dict(data["metrics"])
            tables = {k: metrics.pop(k) for k in _TABLES if isinstance(metrics.get(k), dict)}
            data = {**data, "metrics": metrics, **tables}
        return data


class SplitEvaluation(Evaluation):
    """``tunelab eval``: an evaluation with the model and split it was run on."""

    model: str
    split: str


class CompareRow(Part):
    """One setting of the compare table: base k-shot or the fine-tuned model."""

    name: str = Field(description="'base 0-shot', 'base 4-shot', 'fine-tuned'.")
    model: Literal["base", "tuned"]
    shots: int
    selection: str | None = Field(None, description="How demonstrations were chosen.")
    n: int
    metrics: dict[str, float]
    ci95: dict[str, Interval] = Field(default_factory=dict)
    prompt_tokens: float = Field(description="Mean prompt tokens per request.")
    ms_per_example: float | None = Field(None, description="Batched model time per example.")
    latency_ms: float | None = Field(None, description="Median latency of one request alone.")


class CompareTable(Part):
    """Base zero-/few-shot prompting vs the fine-tuned model on one test sample."""

    primary: str = Field(description="The metric the conclusion is about.")
    n: int | None = Field(None, description="Test examples every row is scored on.")
    rows: list[CompareRow]
    conclusion: str | None = None
    skipped: list[str] = Field(
        default_factory=list, description="The k-shot rows that could not be built, and why."
    )

    def tuned_row(self) -> CompareRow | None:
        return next((r for r in self.rows if r.model == "tuned"), None)


class CalibrationSummary(Part):
    ece: float
    brier: float
    nll: float
    accuracy: float
    mean_confidence: float


class ReliabilityBin(Part):
    lo: float
    hi: float
    count: int
    confidence: float | None = Field(description="None for an empty bin.")
    accuracy: float | None = Field(description="None for an empty bin.")


class Reliability(Part):
    before: list[ReliabilityBin]
    after: list[ReliabilityBin]


class Calibration(Part):
    """Temperature scaling fitted on val; calibration on test before (T = 1) and after."""

    temperature: float
    bins: int
    n_fit: int
    n_test: int
    before: CalibrationSummary
    after: CalibrationSummary
    reliability: Reliability | None = None
    fit_split: str = "val"
