"""The one config schema of tunelab.

Every field has a description: they are the config reference (``tunelab config schema``,
``docs/config.md``). Unknown keys are errors (``extra="forbid"``); the loader adds a
did-you-mean suggestion. Components never see this object: builder functions pick the
plain values they need. The `data` and `forgetting` sections live in their own modules
(``data_section.py``, ``forgetting_section.py``); this one assembles :class:`Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.config.data_section import (
    AnonymizeConfig,
    CleanConfig,
    DataConfig,
    SplitConfig,
    TaskConfig,
)
from tunelab.config.distill_section import DistillConfig
from tunelab.config.forgetting_section import ForgettingConfig
from tunelab.config.section import Section
from tunelab.config.space import check_search
from tunelab.config.sweep_section import SearchConfig, SearchParam

__all__ = [
    "AnonymizeConfig",
    "CleanConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
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


class ModelConfig(Section):
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


class LoraConfig(Section):
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


class MethodConfig(Section):
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


class EarlyStoppingConfig(Section):
    patience: int = Field(
        3, ge=1, description="Stop after this many validations without improvement."
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="An improvement must lower val loss by more than this."
    )


class TrainConfig(Section):
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


class EvalConfig(Section):
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


class CompareConfig(Section):
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


class CalibrationConfig(Section):
    enabled: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Fit a temperature on the val split after training (classification and "
        "label-scored tasks). `auto`: whenever the task has labels.",
    )
    bins: int = Field(15, ge=2, le=100, description="Confidence bins of ECE and the diagram.")
    max_examples: int | None = Field(
        512, ge=8, description="Val examples the temperature is fitted on (seeded sample)."
    )


class TrackingConfig(Section):
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


class Config(Section):
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
    distill: DistillConfig = Field(
        default_factory=DistillConfig,
        description="A smaller student trained from the fine-tuned model by `tunelab distill` "
        "(docs/distill.md); the other verbs ignore it.",
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
            check_search(self)
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name
