"""The ``forgetting`` part of ``results.json`` (and the whole of ``forgetting.json``): the
retention of general abilities, base vs fine-tuned, per probe and overall.

:func:`tunelab.forgetting.report.compare` computes it; the formulas (retention ratio per
metric, the capped mean, the paired bootstrap) are in that module's docstring.
"""

from __future__ import annotations

from pydantic import Field

from tunelab.results.evaluation import Interval, Part

__all__ = ["Bootstrap", "ProbeRetention", "Retention", "SuiteSeconds"]


class ProbeRetention(Part):
    """One probe: the base's and the fine-tuned model's mean score, their difference and
    the share of the base's ability that is left."""

    metric: str = Field(description="nll, match_f1, accuracy, rougeL, exact_match, kl, agreement.")
    description: str = ""
    n_items: int | None = None
    higher_is_better: bool
    base: float | None
    tuned: float | None
    delta: float | None = Field(description="tuned - base.")
    ci95: Interval = Field(description="Paired bootstrap 95% interval of delta.")
    significant: bool = Field(description="Whether ci95 excludes 0.")
    retention: float | None = Field(description="1 = all kept; None: no ratio (x / 0).")
    retention_ci95: Interval
    base_ppl: float | None = Field(None, description="exp(base), nll probes only.")
    tuned_ppl: float | None = Field(None, description="exp(tuned), nll probes only.")


class Bootstrap(Part):
    n_boot: int
    seed: int
    kind: str


class SuiteSeconds(Part):
    base: float
    tuned: float


class Retention(Part):
    """The retention report of a fine-tuned model against its base."""

    base_model: str | None = None
    tuned_model: str | None = None
    retention_score: float | None = Field(
        description="Mean over probes of min(retention, 1); None when no probe has a ratio."
    )
    retention_ci95: Interval
    n_probes_in_score: int
    probes: dict[str, ProbeRetention]
    notes: list[str] = Field(default_factory=list)
    bootstrap: Bootstrap | None = None
    seconds: SuiteSeconds | None = None
    min_retention: float | None = Field(None, description="forgetting.min_retention.")
    base_cached: bool | None = Field(
        None, description="Whether the base measurement came from the cache."
    )
