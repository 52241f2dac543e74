"""``Results``: what ``results.json`` is. Each stage of a run returns its part; the run
writes the dump of the whole (:func:`write_results`) and every reader (report, model card,
CLI, tracking) reads its fields.

A part is None, and has no key in the file, when its stage did not run (``eval.base:
false``, no compare, no retention suite, ``tunelab train`` alone). A field with a default
may be missing from a file an older tunelab wrote: such files still load
(:func:`read_results`), and the ``mode="before"`` validators carry what typed results moved
(see ``docs/results.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, JsonValue, ValidationError, model_validator

from tunelab.errors import TunelabError
from tunelab.results._files import write_json
from tunelab.results.evaluation import Calibration, CompareTable, Evaluation, Part
from tunelab.results.retention import Retention

__all__ = [
    "DataCard",
    "Environment",
    "Method",
    "Mitigations",
    "ModelSource",
    "PiiCard",
    "Results",
    "TaskCard",
    "Training",
    "read_results",
    "write_results",
]


class ModelSource(Part):
    base: str = Field(description="model.base as configured: alias, hub id, folder or .gguf.")
    source: str | None = Field(None, description="Where the weights came from.")


class Method(Part):
    kind: str = Field(description="lora, full or frozen.")
    head: str = Field(description="lm or classifier.")


class Environment(Part):
    torch: str
    python: str | None = None
    device: str
    precision: str = Field(description="fp32, bf16 or fp16, as resolved for the device.")
    threads: int | None = None


class _Card(Part):
    # the data layer owns the data card (data/data_card.json) and may add facts to it:
    # the keys the readers use are typed, any others are kept as they are
    model_config = ConfigDict(extra="allow")


class PiiCard(_Card):
    policy: str
    found: dict[str, int] = Field(default_factory=dict)
    note: str | None = None


class TaskCard(_Card):
    """Where one task's rows went."""

    format: str | None = None
    rows_in: int | None = None
    kept: int | None = None
    dropped: dict[str, int] = Field(default_factory=dict, description="'stage: reason' -> rows.")
    recipe_dropped: dict[str, int] = Field(default_factory=dict)
    after_stage: dict[str, int] | None = None
    splits: dict[str, int] = Field(default_factory=dict)
    leakage_removed: dict[str, int] = Field(default_factory=dict)


class DataCard(_Card):
    """The data card of the prepared splits (the same as ``data/data_card.json``)."""

    format: str | None = None
    format_note: str | None = None
    split_method: str | None = None
    templates: dict[str, dict[str, int]] | None = None
    template: str | None = None
    hash: str | None = Field(None, description="Hash of the prepared rows.")
    labels: list[str] | None = None
    label_words: dict[str, str] | None = None
    repeated_in_mixture: int | None = None
    timings_s: dict[str, float] | None = None
    pii: PiiCard | None = None
    tasks: dict[str, TaskCard] = Field(default_factory=dict)
    rows_in: int | None = None
    rows_kept: int | None = None
    splits: dict[str, int] = Field(default_factory=dict)
    token_lengths: dict[str, dict[str, int | float]] | None = None
    warnings: list[str] = Field(default_factory=list)
    label_balance: dict[str, dict[str, int]] | None = None


class Training(Part):
    """What the loop did; the kept checkpoint is the best one (lowest val loss)."""

    steps: int
    stopped: str = Field(description="completed, early_stopping, max_time...")
    best_step: int | None = None
    best_val_loss: float | None = None
    tokens: int | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None
    skipped_steps: int | None = Field(None, description="Non-finite batches skipped.")
    processes: int | None = None
    held_mb: float | None = Field(
        None, description="Parameters + gradients + optimizer state, MiB (rank 0)."
    )
    parallel: str | None = Field(None, description="ddp or fsdp; distributed runs only.")
    peak_rss_mb_per_rank: list[float] | None = None
    held_mb_per_rank: list[float] | None = None


class Mitigations(Part):
    """The forgetting mitigations used, and the facts each reported when it finished."""

    used: list[str]
    facts: dict[str, JsonValue] = Field(
        default_factory=dict, description="e.g. ewc_fisher_mean, si_matched_previous."
    )

    @model_validator(mode="before")
    @classmethod
    def _facts_beside_used(cls, data: Any) -> Any:
        """results.json before typed results kept the facts beside ``used``."""
        if isinstance(data, dict) and "facts" not in data:
            data = {"used": data.get("used", []),
                    "facts": {k: v for k, v in data.items() if k != "used"}}  # fmt: skip
        return data


class Results(Part):
    """``results.json``: one run's numbers, each part written by the stage that measured it."""

    tunelab_version: str | None = None
    run: str | None = Field(None, description="The run's name.")
    model: ModelSource | None = None
    method: Method | None = None
    data: DataCard | None = None
    environment: Environment | None = None
    base: Evaluation | None = Field(None, description="The base model zero-shot on test.")
    trainable_params: int | None = None
    total_params: int | None = None
    training: Training | None = None
    mitigations: Mitigations | None = None
    calibration: Calibration | None = None
    tuned: Evaluation | None = Field(None, description="The fine-tuned model on test.")
    compare: CompareTable | None = None
    forgetting: Retention | None = None
    wall_seconds: float | None = None
    peak_rss_mb: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object results.json holds; a part whose stage did not run has no key."""
        return {k: v for k, v in super().to_json().items() if v is not None}


def write_results(path: Path, results: Results) -> None:
    """``results.json``, atomically."""
    write_json(path, results.to_json())


def read_results(path: Path) -> Results:
    """Load a results.json, this version's or an older one; TunelabError when it is not one."""
    hint = "rerun `tunelab run CONFIG` to rewrite it"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TunelabError(f"{path} is not valid JSON: {exc}", hint=hint) from exc
    if not isinstance(data, dict):
        raise TunelabError(f"{path} holds a {type(data).__name__}, not an object", hint=hint)
    try:
        return Results.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise TunelabError(
            f"{path} does not have the shape of results.json ({exc.error_count()} problems: "
            f"{problems})",
            hint=f"{hint}; the shape is docs/results.schema.json",
        ) from exc
