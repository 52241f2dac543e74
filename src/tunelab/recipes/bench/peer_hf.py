"""The peer of ``tunelab bench train``: Hugging Face ``Trainer`` + PEFT, as its docs teach.

Imported only by the benchmark's child process; nothing on tunelab's training path uses
it. The recipe is the common one: ``AutoModelForCausalLM`` (here the same weights tunelab
loads), ``peft.get_peft_model`` with the same LoRA config, ``DataCollatorForSeq2Seq``
padding each batch to its longest row with ``-100`` labels, a shuffled sampler, AdamW,
linear schedule with the same warmup, gradient clipping at 1.0, and no evaluation or
saving during training (both would only add time to the peer).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from tunelab.data.tokenize import Encoded
from tunelab.results import peak_rss_mb

__all__ = ["train_with_trainer"]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, items: list[Encoded]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.items[i]
        return {"input_ids": e.input_ids, "attention_mask": [1] * e.length, "labels": e.labels}


def train_with_trainer(spec: Any, train: list[Encoded], tokenizer: Any, *,
                       bf16: bool) -> dict[str, Any]:  # fmt: skip
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunelab.models.loading import load_base

    torch.manual_seed(spec.seed)
    lm = load_base(spec.model)
    if spec.method == "lora":
        lm = get_peft_model(lm, LoraConfig(
            r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
            target_modules=list(spec.lora_targets), bias="none", task_type="CAUSAL_LM",
        ))  # fmt: skip
    padded = {"tokens": 0}
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        padded["tokens"] += int(batch["input_ids"].numel())
        return batch

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="tunelab-bench-hf-"),
        per_device_train_batch_size=spec.batch_size,
        num_train_epochs=1,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=spec.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=bf16,
        seed=spec.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=lm, args=args, train_dataset=_Rows(train), data_collator=collate)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {
        "train_seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "precision": "bf16" if bf16 else "fp32",
        "settings": {
            "trainer": "transformers.Trainer",
            "bf16": bf16,
            "collator": "DataCollatorForSeq2Seq(padding=True)",
        },
        "padded_tokens": padded["tokens"],
        "lm": trainer.model,
    }
