"""The ``sweep`` section: a hyperparameter search space and how it is searched.

Every entry is checked against the whole schema when the config loads
(:func:`tunelab.config.space.check_search`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunelab.config.section import Section

__all__ = ["SearchConfig", "SearchParam"]


class SearchParam(Section):
    """One dimension of a search space: a range (``low``/``high``) or a list of choices.
    Checked with the whole space (``tunelab.config.space``), so that every entry's problem
    is reported in one go."""

    low: float | None = Field(
        None, description="Lowest value of a range (inclusive); with `high`, not `choices`."
    )
    high: float | None = Field(None, description="Highest value of a range (inclusive).")
    log: bool = Field(
        False, description="Sample the range on a log scale (learning rates, strengths)."
    )
    step: float | None = Field(
        None, gt=0, description="Sample only low, low + step, ...; not with `log`."
    )
    choices: list[bool | int | float | str | None] | None = Field(
        None,
        min_length=1,
        description="Sample one of these values (any field type); instead of a range.",
    )


class SearchConfig(Section):
    trials: int = Field(
        20,
        ge=1,
        description="Trials the study should hold (completed, pruned or failed); running "
        "the sweep again continues the study up to this number.",
    )
    space: dict[str, SearchParam] = Field(
        min_length=1,
        description="What is searched: a dotted config key (e.g. `train.lr`, "
        "`method.lora.r`) mapped to a range `{low, high, log, step}` or `{choices: [...]}`. "
        "Integer fields get integers. Every value is checked against the field's own rules "
        "when the config is loaded.",
    )
    metric: Annotated[str, Field(pattern=r"^val_[A-Za-z0-9_]+$")] = Field(
        "val_loss",
        description="The objective, measured on the validation split (never test): "
        "`val_loss`, or a task metric scored during training (`val_accuracy`, "
        "`val_f1_macro`, `val_exact_match`...; needs `eval.val_examples` > 0). A trial's "
        "value is its best over its validations.",
    )
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto",
        description="`auto`: minimize losses and perplexity, maximize every other metric.",
    )
    sampler: Literal["tpe", "random"] = Field(
        "tpe",
        description="`tpe`: Optuna's Tree-structured Parzen Estimator (random for the first "
        "`startup_trials`); `random`: independent uniform draws.",
    )
    seed: int | None = Field(None, description="Seed of the sampler; null: `train.seed`.")
    pruner: Literal["median", "none"] = Field(
        "median",
        description="`median`: stop a trial at a validation where its best value so far is "
        "worse than the median of earlier trials at the same step; `none`: every trial runs "
        "to the end.",
    )
    startup_trials: int = Field(
        3,
        ge=0,
        description="Trials to learn from before acting: the pruner prunes nothing until "
        "this many trials completed, and TPE samples at random until this many completed "
        "or were pruned.",
    )
    warmup_steps: int = Field(0, ge=0, description="No trial is pruned before this optimizer step.")
    timeout_minutes: float | None = Field(
        None,
        gt=0,
        description="Start no new trial after this many minutes (the running one finishes); "
        "null: no limit.",
    )

    @property
    def goal(self) -> Literal["minimize", "maximize"]:
        """The resolved ``direction``."""
        if self.direction != "auto":
            return self.direction
        lower_is_better = self.metric.endswith("loss") or "perplexity" in self.metric
        return "minimize" if lower_is_better else "maximize"
