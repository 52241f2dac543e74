"""Shared fixtures: offline settings, a tiny Llama model + tokenizer built in-process, tiny data.

The tiny model (2 layers, width 32, a ~200-token vocabulary) is randomly initialised from a
config and saved to a temporary folder once per session; tests point ``model.base`` at it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# converted models and tokenised splits go to the repo's cache unless the caller chose one
os.environ.setdefault("TUNELAB_CACHE", str(Path(__file__).resolve().parents[1] / ".cache"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core (pytest-xdist): one OpenMP thread each, or the
    # workers' thread pools oversubscribe the cores (set before torch is imported)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

POSITIVE = ["great", "wonderful", "moving", "brilliant", "fun", "superb", "charming"]
NEGATIVE = ["dull", "boring", "awful", "tedious", "bland", "messy", "lifeless"]
FILLER = ["the", "film", "movie", "story", "acting", "plot", "was", "is", "very", "and", "a"]


def _corpus() -> list[str]:
    words = POSITIVE + NEGATIVE + FILLER + ["positive", "negative", "review", "answer", "one"]
    words += ["word", "or", "following", "movie", "sentiment", "classify", "text", "label"]
    lines = [" ".join(words)] * 3
    rng = random.Random(0)
    for _ in range(200):
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return lines


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama model and a matching tokenizer to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<unk>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=special, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_sentiment_jsonl(path: Path, n: int = 60, seed: int = 0) -> Path:
    """A tiny, learnable sentiment dataset: the label follows from the words used."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            positive = i % 2 == 0
            words = rng.sample(POSITIVE if positive else NEGATIVE, 2) + rng.sample(FILLER, 3)
            rng.shuffle(words)
            row = {"text": " ".join(words), "label": "pos" if positive else "neg"}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def sentiment_file(tmp_path: Path) -> Path:
    return write_sentiment_jsonl(tmp_path / "sentiment.jsonl")


def tiny_config(model_dir: Path, data_path: Path, out: Path, **sections: dict) -> dict:
    """A config dict for the tiny model: fp32, deterministic, a few steps."""
    cfg: dict = {
        "name": "tiny",
        "output_dir": str(out),
        "model": {"base": str(model_dir), "max_length": 64},
        "data": {
            "source": str(data_path),
            "label_words": {"pos": "positive", "neg": "negative"},
            "template": "classification",
        },
        "method": {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {
            "max_steps": 8,
            "batch_size": 4,
            "lr": 5e-3,
            "eval_every": 4,
            "log_every": 2,
            "precision": "fp32",
            "threads": 1,
            "early_stopping": None,
        },
        "eval": {"batch_size": 8, "threads": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def kill_after_checkpoint(proc, run: Path, step: int, kill, timeout: float = 300) -> None:
    """Call ``kill()`` once ``run``'s checkpoint pointer names a step >= ``step`` (or give up
    when ``proc`` ends or ``timeout`` passes); the caller asserts how ``proc`` ended."""
    import time

    from tunelab.training.checkpoint import read_pointer

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        last = read_pointer(run / "checkpoints").get("last")
        if last and int(last.split("-")[1]) >= step:
            kill()
            return
        time.sleep(0.01)
