"""The `distill` section of the config: how ``tunelab distill`` trains a smaller student.

Part of the one config schema (``config/schema.py`` assembles it). The loop's other knobs
(warmup, schedule, weight decay, clipping, validation subset, early stopping, checkpoints,
threads, precision, seed) are the ``train`` section's; this section names what differs.
"""

from __future__ import annotations

import itertools

from pydantic import Field, field_validator, model_validator

from tunelab.config.section import Section

__all__ = ["DistillConfig"]


class DistillConfig(Section):
    layers: int | list[int] | None = Field(
        None,
        description="The student cut from the teacher: an int N keeps N evenly spaced "
        "teacher layers, the first and the last included; a list names the kept teacher "
        "layer indices (strictly increasing); null keeps half of the teacher's layers "
        "(rounded up), evenly spaced. Student layer j starts as the kept layer j of the "
        "teacher with its LoRA adapters merged.",
    )
    student: str | None = Field(
        None,
        description="Instead of a cut: a smaller model (alias, folder, hub id) with exactly "
        "the teacher's tokenizer and vocabulary. Leave `layers` null then.",
    )
    steps: int = Field(200, ge=1, description="Optimizer steps of the student.")
    batch_size: int = Field(16, ge=1, description="Examples per step (task and general).")
    lr: float = Field(
        5.0e-4, gt=0, lt=1.0, description="Peak learning rate (AdamW, every student weight)."
    )
    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the soft-target term: the loss per response position is "
        "alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, reference token).",
    )
    temperature: float = Field(2.0, gt=0, description="T, the softmax temperature of the KL.")
    general: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the loss that comes from general chat/QA/prose data (the "
        "retention suite's train part), whatever its token count; 0: task data only. As many "
        "general examples are mixed into the training list (a share `general` of the "
        "examples, at most 4,096).",
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Validate (and checkpoint) every this many steps; null: `train.eval_every`.",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1 layers, got {value}")
        if isinstance(value, list) and (
            not value or value[0] < 0 or any(b <= a for a, b in itertools.pairwise(value))
        ):
            raise ValueError(
                f"must be strictly increasing layer indices >= 0, got {value}; e.g. [0, 2, 29]"
            )
        return value

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        if self.layers is not None and self.student is not None:
            raise ValueError(
                "give either distill.layers (cut the teacher) or distill.student (a smaller "
                "model), not both"
            )
        return self
