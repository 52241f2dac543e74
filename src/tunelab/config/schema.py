"""The one config schema of tunelab.

Every field has a description: they are the config reference (``tunelab config schema``,
``docs/config.md``). Unknown keys are errors (``extra="forbid"``); the loader adds a
did-you-mean suggestion. Components never see this object: builder functions pick the
plain values they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AnonymizeConfig",
    "CleanConfig",
    "Config",
    "DataConfig",
    "EarlyStoppingConfig",
    "EvalConfig",
    "ForgettingConfig",
    "LoraConfig",
    "MethodConfig",
    "ModelConfig",
    "SearchConfig",
    "SearchParam",
    "SplitConfig",
    "TaskConfig",
    "TrainConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    base: str = Field(
        "smollm2-135m-instruct",
        description="Base model: a built-in alias (see `tunelab models`), a local Hugging Face "
        "folder, a `.gguf` file, or a hub id (needs a network).",
    )
    max_length: int = Field(
        256,
        ge=8,
        le=131072,
        description="Truncate every example to this many tokens (prompt is cut from the left, "
        "the response is kept).",
    )
    use_chat_template: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Wrap prompts in the tokenizer's chat template: `auto` uses it when the "
        "tokenizer has one (completion data never uses it).",
    )


class SplitConfig(_Section):
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


class CleanConfig(_Section):
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


class AnonymizeConfig(_Section):
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


class _Dataset(_Section):
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


class TaskConfig(_Dataset):
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


class DataConfig(_Section):
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


class LoraConfig(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules to adapt: `all-linear` or a list of module names such as "
        "`[q_proj, v_proj]`.",
    )
    layers: int | list[int] | None = Field(
        None,
        description="Adapt only some transformer layers: an int N is the top N layers, a list "
        "names layer indices; null adapts every layer. Gradients then stop at the lowest "
        "adapted layer, so training is cheaper (top 10 of 30 layers: ~1.9x the tokens/s).",
    )


class MethodConfig(_Section):
    kind: Literal["lora", "full", "frozen"] = Field(
        "lora",
        description="`lora`: train low-rank adapters; `full`: train every weight; `frozen`: "
        "train only the classifier head (needs `head: classifier`).",
    )
    head: Literal["lm", "classifier"] = Field(
        "lm",
        description="`lm`: the model answers with the label words (label scoring); "
        "`classifier`: a linear layer over the labels replaces the LM head.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")

    @model_validator(mode="after")
    def _frozen_needs_head(self) -> MethodConfig:
        if self.kind == "frozen" and self.head != "classifier":
            raise ValueError(
                "kind 'frozen' trains nothing with the LM head; set `head: classifier` "
                "or choose kind 'lora' or 'full'"
            )
        return self


class EarlyStoppingConfig(_Section):
    patience: int = Field(
        3, ge=1, description="Stop after this many validations without improvement."
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="An improvement must lower val loss by more than this."
    )


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_batch_tokens: int | None = Field(
        512,
        ge=16,
        description="Memory cap: a micro-batch whose padded size (rows x longest row) is "
        "above this many tokens runs as several smaller pieces before the same optimizer "
        "step. The loss and gradients are unchanged; peak memory follows this number. On a "
        "CPU 512 measured fastest too (docs/performance.md); raise it on a GPU. null: never "
        "split.",
    )
    length_grouping: int = Field(
        4,
        ge=1,
        description="Rows are shuffled, cut into pools of this many batches, and each pool "
        "is sorted by length before it is cut into batches, so rows of similar length share "
        "a batch and little compute goes to padding. 1: plain random batches. Larger pools "
        "pad less but make each batch more alike (docs/performance.md measures the trade).",
    )
    packing: bool = Field(
        False,
        description="Pack the examples of a micro-batch into shared rows of up to "
        "`model.max_length` tokens, so no compute goes to padding. Packed examples never "
        "attend to each other (position ids restart per example; block-diagonal causal "
        "attention); the loss is the unpacked one. LM head only.",
    )
    lr: float = Field(2.0e-4, gt=0, lt=1.0, description="Peak learning rate (AdamW).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    warmup: float = Field(
        0.05, ge=0.0, description="Warmup: a fraction of all steps if < 1, else a step count."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this value; null disables."
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Override the model's attention dropout (null keeps the model's value).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Autocast dtype; weights stay fp32. `auto` uses bf16 where the CPU or GPU "
        "runs it natively.",
    )
    eval_every: int = Field(
        50, ge=1, description="Validate (and checkpoint) every this many optimizer steps."
    )
    val_max_examples: int | None = Field(
        256,
        ge=1,
        description="Compute validation loss on at most this many val examples (a fixed "
        "seeded subset); null uses the whole split.",
    )
    log_every: int = Field(10, ge=1, description="Write a metrics line every this many steps.")
    early_stopping: EarlyStoppingConfig | None = Field(
        default_factory=EarlyStoppingConfig,
        description="Stop when val loss stops improving; null disables.",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A batch whose loss or gradient norm is NaN or infinite: `stop` ends the "
        "run with a message naming the step (no update applied; the best checkpoint is "
        "intact); `skip` applies no update for that batch, counts it (`training.skipped_steps` "
        "in results.json, a `skipped` line in metrics.jsonl) and goes on.",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How a launch with several processes (`tunelab train --nproc N`, "
        "`accelerate launch`) shares the model: `ddp` keeps a full copy on every process; "
        "`fsdp` shards parameters, gradients and optimizer state over the processes (FSDP2), "
        "for models whose training state does not fit one device. One process ignores it. "
        "docs/distributed.md.",
    )
    keep_checkpoints: int = Field(
        1,
        ge=1,
        description="Step checkpoints kept besides the best one (oldest are deleted).",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for training; null uses every core."
    )
    seed: int = Field(0, description="Seed for initialisation, dropout and data order.")


Metric = Literal[
    "accuracy",
    "f1",
    "precision",
    "recall",
    "exact_match",
    "bleu",
    "rouge",
    "chrf",
    "confusion_matrix",
    "perplexity",
]


class EvalConfig(_Section):
    metrics: list[Metric] | Literal["auto"] = Field(
        "auto",
        description="Metrics on the test split. `auto`: accuracy and f1 for classification; "
        "exact_match, bleu and rouge for generation.",
    )
    base: bool = Field(
        True, description="Also evaluate the base model (zero-shot) on the same test split."
    )
    batch_size: int = Field(16, ge=1, description="Examples per evaluation batch.")
    max_new_tokens: int = Field(
        64, ge=1, description="Generation length limit for generation tasks."
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for evaluation; null uses every core."
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples of every metric's 95% interval (over test examples); "
        "0 turns intervals off.",
    )
    samples: int = Field(
        8,
        ge=0,
        description="Predictions kept in results.json and the report (half right, half wrong).",
    )
    val_examples: int = Field(
        32,
        ge=0,
        description="During training, this many val examples are decoded (or label-scored) and "
        "scored with the task metrics at each validation, logged as `val_<metric>` beside "
        "val_loss, with sample predictions in `val_samples.jsonl`; 0 turns it off.",
    )
    val_every: int | None = Field(
        None,
        ge=1,
        description="Steps between those generation metrics; null: at every validation "
        "(`train.eval_every`). Must be a multiple of `train.eval_every`.",
    )
    report: bool = Field(
        True, description="Write `report.html` (plots inline) into the run folder after a run."
    )


class CompareConfig(_Section):
    enabled: bool = Field(
        True,
        description="`run` compares the base model zero-shot and k-shot with the fine-tuned "
        "model on the test split (the `compare` table).",
    )
    shots: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [4],
        description="k of each few-shot row (demonstrations drawn from the train split).",
    )
    selection: Literal["random", "similar"] = Field(
        "random",
        description="How demonstrations are drawn: `random` (seeded; every label shown when k "
        "allows) or `similar` (the k train examples nearest by TF-IDF cosine, nearest last).",
    )
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Score the few-shot rows on a seeded sample of this many test examples "
        "(k-shot prompts are k+1 times longer); null: the whole test split.",
    )
    max_length: int = Field(
        2048,
        ge=16,
        description="Token limit of a few-shot prompt; longer ones lose their oldest "
        "demonstrations' tokens first.",
    )
    latency_requests: int = Field(
        16,
        ge=0,
        description="Requests timed one at a time (batch size 1) for the latency column; 0: "
        "report only the batched time per example.",
    )
    seed: int = Field(0, description="Seed of the demonstration draw and the sample.")


class CalibrationConfig(_Section):
    enabled: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Fit a temperature on the val split after training (classification and "
        "label-scored tasks). `auto`: whenever the task has labels.",
    )
    bins: int = Field(15, ge=2, le=100, description="Confidence bins of ECE and the diagram.")
    max_examples: int | None = Field(
        512, ge=8, description="Val examples the temperature is fitted on (seeded sample)."
    )


class TrackingConfig(_Section):
    tensorboard: bool = Field(True, description="TensorBoard event files in `<run>/tensorboard`.")
    mlflow: bool = Field(
        False,
        description="Also log params, every scalar and the report to MLflow (needs `pip "
        "install tunelab[mlflow]`).",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; null: `file:<output_dir>/mlruns`."
    )
    experiment: str = Field("tunelab", description="MLflow experiment name.")


class ReplayConfig(_Section):
    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the training examples that are general data."
    )
    source: str | None = Field(
        None,
        description="Replay this dataset (a file or built-in recipe, chat/instruction/"
        "completion rows) instead of the built-in general data.",
    )


class EwcConfig(_Section):
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


class SiConfig(_Section):
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


class L2spConfig(_Section):
    strength: float = Field(
        1.0, ge=0, description="alpha/2 * sum (theta - theta_start)^2 is added to the loss."
    )


class KdConfig(_Section):
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


class WiseConfig(_Section):
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the fine-tuned weights: (1-alpha) * start + alpha * tuned; "
        "1.0 keeps the fine-tuned model.",
    )


class MitigationsConfig(_Section):
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


class RetentionSetConfig(_Dataset):
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


class SweepConfig(_Section):
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


class ForgettingConfig(_Section):
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


class SearchParam(_Section):
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


class SearchConfig(_Section):
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


class Config(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        "run", description="Run name; the run folder is `<output_dir>/<name>`."
    )
    output_dir: Path = Field(Path("runs"), description="Folder that holds run folders.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    data: DataConfig = Field(default_factory=DataConfig, description="The task data.")
    method: MethodConfig = Field(default_factory=MethodConfig, description="What is trained.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Test-split evaluation.")
    forgetting: ForgettingConfig = Field(
        default_factory=ForgettingConfig,
        description="Catastrophic forgetting: what is measured before/after and mitigated.",
    )
    compare: CompareConfig = Field(
        default_factory=CompareConfig,
        description="Base zero-/few-shot vs fine-tuned on the same test split.",
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Temperature scaling of confidences."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment tracking (TensorBoard, MLflow)."
    )
    sweep: SearchConfig | None = Field(
        None,
        description="Hyperparameter search run by `tunelab sweep` (docs/sweep.md); the other "
        "verbs ignore it.",
    )

    @field_validator("output_dir")
    @classmethod
    def _not_empty(cls, value: Path) -> Path:
        if str(value).strip() == "":
            raise ValueError("must be a folder path")
        return value

    @model_validator(mode="after")
    def _packing_needs_lm_head(self) -> Config:
        if self.train.packing and self.method.head == "classifier":
            raise ValueError(
                "train.packing packs responses for the LM head; with `method.head: "
                "classifier` set `train.packing: false`"
            )
        return self

    @model_validator(mode="after")
    def _val_every_on_validations(self) -> Config:
        every = self.eval.val_every
        if every is not None and every % self.train.eval_every:
            raise ValueError(
                f"eval.val_every ({every}) must be a multiple of train.eval_every "
                f"({self.train.eval_every}): generation metrics run at validations"
            )
        return self

    @model_validator(mode="after")
    def _search_space(self) -> Config:
        if self.sweep is not None:  # every key and value checked before any compute
            from tunelab.config.space import check_search

            check_search(self)
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name
