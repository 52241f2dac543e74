"""The `forgetting` section of the config: the retention suite and the mitigations.

Part of the one config schema (``config/schema.py`` assembles it).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from tunelab.config.data_section import DatasetSource
from tunelab.config.section import Section

__all__ = ["ForgettingConfig", "MitigationsConfig", "RetentionSetConfig"]


class ReplayConfig(Section):
    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the training examples that are general data."
    )
    source: str | None = Field(
        None,
        description="Replay this dataset (a file or built-in recipe, chat/instruction/"
        "completion rows) instead of the built-in general data.",
    )


class EwcConfig(Section):
    strength: float = Field(
        1.0, ge=0, description="lambda: weight of the Fisher-weighted pull to the start."
    )
    samples: int = Field(
        64, ge=1, description="General examples whose squared gradients estimate the Fisher."
    )
    normalize: bool = Field(
        True,
        description="Divide the Fisher by its mean, so `strength` reads like an L2-SP strength "
        "on an average parameter.",
    )


class SiConfig(Section):
    strength: float = Field(1.0, ge=0, description="c: weight of the importance penalty.")
    damping: float = Field(
        0.1, gt=0, description="xi in omega / (delta^2 + xi): keeps the importance finite."
    )
    general_steps: int = Field(
        16,
        ge=0,
        description="Steps of a consolidation path on general data before training: the "
        "first round's estimate of what the base model's abilities depend on.",
    )
    normalize: bool = Field(True, description="Divide the importance by its mean.")
    previous: str | None = Field(
        None,
        description="An earlier round's model folder (its `si_importance.safetensors`): this "
        "round also protects what that round learned.",
    )


class L2spConfig(Section):
    strength: float = Field(
        1.0, ge=0, description="alpha/2 * sum (theta - theta_start)^2 is added to the loss."
    )


class KdConfig(Section):
    strength: float = Field(
        1.0, ge=0, description="Weight of KL(base || tuned) on general batches."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of both models.")
    batch_size: int | None = Field(
        None, ge=1, description="General examples per step; null uses `train.batch_size`."
    )
    source: str | None = Field(
        None, description="Distil on this dataset instead of the built-in general data."
    )


class WiseConfig(Section):
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the fine-tuned weights: (1-alpha) * start + alpha * tuned; "
        "1.0 keeps the fine-tuned model.",
    )


class MitigationsConfig(Section):
    replay: ReplayConfig | None = Field(
        None, description="Mix general data into training (multi-task learning)."
    )
    ewc: EwcConfig | None = Field(
        None, description="Elastic weight consolidation (Kirkpatrick et al., 2017)."
    )
    si: SiConfig | None = Field(None, description="Synaptic intelligence (Zenke et al., 2017).")
    l2sp: L2spConfig | None = Field(
        None, description="L2 penalty toward the starting weights (Li et al., 2018)."
    )
    kd: KdConfig | None = Field(
        None, description="Distillation from the base model on general data (Li & Hoiem, 2016)."
    )
    wise: WiseConfig | None = Field(
        None, description="Weight-space interpolation with the base (Wortsman et al., 2022)."
    )


class RetentionSetConfig(DatasetSource):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        description="Probe name in reports."
    )
    metric: Literal["auto", "nll", "accuracy", "rougeL", "exact_match", "match_f1"] = Field(
        "auto",
        description="How each example is scored: `auto` is accuracy for classification, "
        "else nll (the reference response's negative log-likelihood).",
    )
    max_examples: int | None = Field(
        None, ge=1, description="Seeded sample size; null uses `forgetting.max_examples`."
    )


class SweepConfig(Section):
    alphas: list[float] = Field(
        [0.0, 0.25, 0.5, 0.75, 1.0],
        min_length=1,
        description="WiSE mixing coefficients that `tunelab forgetting sweep` evaluates.",
    )
    min_retention: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Choose the alpha with the best task metric among those whose retention "
        "score is at least this; if none is, the alpha with the highest retention.",
    )

    @field_validator("alphas")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        bad = [a for a in value if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"alphas must lie in [0, 1]; got {bad}")
        return sorted(set(value))


class ForgettingConfig(Section):
    suite: Literal["general", "none"] = Field(
        "general",
        description="Built-in retention suite measured before and after training: `general` "
        "(knowledge QA, prose and chat perplexity, drift KL, instruction following); `none` "
        "measures only `sets`.",
    )
    sets: list[RetentionSetConfig] = Field(
        default_factory=list,
        description="Your own retention sets, e.g. the task of a previous fine-tuning round.",
    )
    max_examples: int = Field(48, ge=2, description="Examples per probe (seeded sample).")
    max_new_tokens: int = Field(32, ge=1, description="Generation length of the generation probes.")
    batch_size: int = Field(16, ge=1, description="Examples per scoring batch.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the 95% intervals.")
    min_retention: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Fail the run (exit status 3) when the retention score is below this.",
    )
    general_examples: int = Field(
        256,
        ge=1,
        description="General-domain training examples available to the mitigations (Fisher, "
        "distillation, replay); disjoint from the suite's probes.",
    )
    mitigations: MitigationsConfig = Field(
        default_factory=MitigationsConfig,
        description="Mitigations, composable; each is off unless its section is present.",
    )
    sweep: SweepConfig = Field(
        default_factory=SweepConfig, description="`tunelab forgetting sweep` settings."
    )
