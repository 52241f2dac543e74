"""The `data` section of the config: sources, tasks, cleaning, anonymisation, splits.

Part of the one config schema (``config/schema.py`` assembles it).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.config.section import Section

__all__ = [
    "AnonymizeConfig",
    "CleanConfig",
    "DataConfig",
    "DatasetSource",
    "SplitConfig",
    "TaskConfig",
]


class SplitConfig(Section):
    method: Literal["auto", "random", "stratified", "group", "column"] = Field(
        "auto",
        description="`random`; `stratified`: label proportions kept equal across splits "
        "(classification); `group`: rows sharing a value of `group_by` (e.g. `movie_name`) "
        "always land in the same split; `column`: the split is read from `column` (values "
        "train / val / validation / dev / test). `auto`: stratified for classification, else "
        "random.",
    )
    val: float | int = Field(
        0.1,
        ge=0,
        description="Validation size: a fraction (< 1) of the rows, or a row count (>= 1). "
        "With `group` it counts groups' rows approximately (whole groups move).",
    )
    test: float | int = Field(
        0.1, ge=0, description="Test size: a fraction (< 1) or a row count (>= 1)."
    )
    group_by: str | None = Field(
        None, description="The column whose values keep rows together (method `group`)."
    )
    column: str | None = Field(
        None, description="The column that names each row's split (method `column`)."
    )
    leakage: Literal["near", "exact", "off"] = Field(
        "near",
        description="After splitting, remove from val and test the rows that duplicate a row "
        "of an earlier split: `exact` (same normalised text) or `near` (exact, plus MinHash "
        "near duplicates at `clean.near_dedupe`, default 0.85). Counted in the data card.",
    )
    seed: int = Field(0, description="Seed of the split; the same seed gives the same split.")

    @model_validator(mode="after")
    def _sizes(self) -> SplitConfig:
        fractions = [v for v in (self.val, self.test) if isinstance(v, float) and v < 1]
        if len(fractions) == 2 and sum(fractions) >= 1.0:
            raise ValueError(
                f"val + test = {sum(fractions):g} leaves no training data; "
                "make their sum smaller than 1"
            )
        for name, value in (("val", self.val), ("test", self.test)):
            if isinstance(value, float) and value >= 1 and not value.is_integer():
                raise ValueError(f"{name} = {value:g}: a fraction is below 1, a count is whole")
        if self.method == "group" and not self.group_by:
            raise ValueError("method 'group' needs `group_by: <column>`, e.g. movie_name")
        if self.method == "column" and not self.column:
            raise ValueError("method 'column' needs `column: <column>` naming each row's split")
        return self


class CleanConfig(Section):
    steps: list[str] = Field(
        default_factory=lambda: ["unicode", "whitespace"],
        description="Text cleaners applied in order to every text field: `unicode` (repair "
        "mojibake with ftfy, NFC), `whitespace` (control characters, line ends, runs of "
        "spaces), `html` (strip tags, unescape entities).",
    )
    min_tokens: int | None = Field(
        None, ge=1, description="Drop rows with fewer tokens (of the base model's tokenizer)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Drop rows with more tokens (prompt + response, the model's tokenizer); "
        "null keeps them (training truncates to model.max_length).",
    )
    dedupe: bool = Field(
        True, description="Drop exact duplicates (same text after NFKC, case and whitespace)."
    )
    near_dedupe: float | None = Field(
        0.85,
        gt=0,
        le=1,
        description="Drop near duplicates: MinHash LSH over character 5-grams, estimated "
        "Jaccard similarity at or above this threshold; null disables.",
    )

    conflicts: Literal["drop", "majority", "keep"] = Field(
        "drop",
        description="Classification inputs seen with different labels: `drop` every such row, "
        "keep the `majority` label's rows (a tie drops all), or `keep` them (reported only).",
    )

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[str]) -> list[str]:
        from tunelab.data.clean import CLEANERS

        unknown = [s for s in steps if s not in CLEANERS]
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; steps: {', '.join(CLEANERS)}")
        return steps


class AnonymizeConfig(Section):
    policy: Literal["redact", "mask", "pseudonymise"] = Field(
        "redact",
        description="`redact`: `[EMAIL]`, `[PHONE]`...; `mask`: letters and digits become "
        "`*`; `pseudonymise`: a consistent fake value per original (see docs/pii.md).",
    )
    types: list[str] | None = Field(
        None,
        description="What to detect: email, phone, credit_card, iban, ip, url, national_id, "
        "person. null: every structured type, plus person when a name model is set.",
    )
    name_model: str | None = Field(
        None,
        description="Path to a spaCy pipeline with an NER component, to detect person "
        "names; without it names are not detected (the data card says so).",
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str] | None) -> list[str] | None:
        from tunelab.data.pii import PII_TYPES

        unknown = [t for t in types or [] if t not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown type(s) {unknown}; types: {', '.join(PII_TYPES)}")
        return types

    @model_validator(mode="after")
    def _person_needs_a_model(self) -> AnonymizeConfig:
        if self.types and "person" in self.types and not self.name_model:
            raise ValueError(
                "type 'person' needs `name_model`: a spaCy pipeline with NER (none ships with "
                "tunelab); or leave 'person' out"
            )
        return self


class DatasetSource(Section):
    """What a task and a retention set share: a named source and how to read it."""

    source: str | list[str] = Field(description="Like `data.source`, for this task.")
    format: Literal["auto", "classification", "instruction", "completion", "chat"] = Field(
        "auto", description="Like `data.format`."
    )
    columns: dict[str, str] = Field(default_factory=dict, description="Like `data.columns`.")
    labels: list[str] | None = Field(None, description="Like `data.labels`.")
    label_words: dict[str, str] = Field(
        default_factory=dict, description="Like `data.label_words`."
    )
    template: str | list[str] | None = Field(None, description="Like `data.template`.")
    system_prompt: str | None = Field(None, description="Like `data.system_prompt`.")


class TaskConfig(DatasetSource):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        description="Task name (data card, per-task evaluation)."
    )
    weight: float = Field(
        1.0, gt=0, description="Share of the training mixture (`mixing: weights`)."
    )
    max_rows: int | None = Field(
        None, ge=1, description="Cap on this task's rows (a seeded sample, before splitting)."
    )


_PER_TASK = ("source", "format", "columns", "labels", "label_words", "template", "system_prompt")


class DataConfig(Section):
    source: str | list[str] = Field(
        "rotten_tomatoes",
        description="A built-in recipe (see `tunelab datasets`), or a path / glob / list of "
        "paths to JSONL, JSON, CSV, TSV or Parquet files.",
    )
    format: Literal["auto", "classification", "instruction", "completion", "chat"] = Field(
        "auto",
        description="Row format. `auto` detects it from the columns and says which it chose.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map tunelab field names to your column names, e.g. "
        "`{text: review, label: category}`. Fields: text, label, instruction, input, output, "
        "prompt, completion, messages.",
    )
    labels: list[str] | None = Field(
        None,
        description="Classification labels in order. Default: the sorted distinct labels "
        "of the data.",
    )
    label_words: dict[str, str] = Field(
        default_factory=dict,
        description="What the model says for each label, e.g. `{fresh: positive}`. Default: the "
        "label itself.",
    )
    template: str | list[str] | None = Field(
        None,
        description="Prompt template: a built-in name (sentiment, classification, instruction, "
        "completion, chat) or Jinja text using the row's fields. A list: one is chosen at "
        "random (seeded) for each example, for instruction diversity. Default: by format.",
    )
    system_prompt: str | None = Field(
        None, description="A system message put before every prompt (chat template only)."
    )
    max_rows: int | None = Field(
        None, ge=1, description="Use at most this many rows (a seeded sample, before splitting)."
    )
    max_train: int | None = Field(
        None, ge=1, description="Cap the training split at this many rows (seeded sample)."
    )
    max_val: int | None = Field(
        None, ge=1, description="Cap the validation split at this many rows (seeded sample)."
    )
    max_test: int | None = Field(
        None, ge=1, description="Cap the test split at this many rows (seeded sample)."
    )
    validation: Literal["strict", "lenient"] = Field(
        "lenient",
        description="`strict`: stop at the first bad rows with a summary (file:line:field: "
        "problem); `lenient`: write bad rows to `data/rejected.jsonl` and go on.",
    )
    max_rejected: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Lenient mode still stops when more than this fraction of rows is "
        "invalid: that is a wrong column mapping or format, not a few bad rows.",
    )
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning and dedupe.")
    anonymize: AnonymizeConfig | None = Field(
        default_factory=AnonymizeConfig,
        description="Detect and replace personal data in every text field; null disables.",
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/val/test split.")
    tasks: list[TaskConfig] | None = Field(
        None,
        description="Several tasks in one run (multi-task): each with its own source, format, "
        "templates and weight. Then leave `source`, `format`, `columns`, `labels`, "
        "`label_words`, `template` and `system_prompt` at the top unset.",
    )
    mixing: Literal["weights", "size"] = Field(
        "weights",
        description="How tasks share the training split: by their `weight`, or by their size "
        "n to the power 1/`temperature` (1: proportional, larger: more uniform).",
    )
    temperature: float = Field(1.0, gt=0, description="Temperature of `mixing: size` sampling.")

    @model_validator(mode="after")
    def _tasks_or_top_level(self) -> DataConfig:
        if self.tasks:
            clash = sorted(self.model_fields_set & set(_PER_TASK))
            if clash:
                raise ValueError(
                    f"with `tasks`, set {', '.join(clash)} inside each task, not at the top"
                )
            names = [t.name for t in self.tasks]
            if len(set(names)) != len(names):
                raise ValueError(f"task names must be distinct: {names}")
        return self
