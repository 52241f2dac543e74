"""``tunelab bench train``: tunelab's loop against Hugging Face Trainer + PEFT, same job.

Every engine trains in a child process of its own (so each peak RSS is its own) on the
same model, the same tokenised rows (one epoch over the same examples, hence the same
real tokens), the same LoRA or full fine-tuning setup, batch size, learning rate and
schedule. Each child reports:

- real tokens/s: non-padding tokens of the training rows / wall time of the training steps
  (model loading and the final evaluation excluded);
- peak RSS of the child while training;
- held-out loss after training, computed by one neutral function for every engine
  (:func:`heldout_loss`, a plain forward per example; the mean cross-entropy over response
  tokens).

The parent measures the matmul peak of this machine (fp32 and bf16, same thread count)
and reports MFU against it: useful model FLOPs per real token (the same count credited to
every engine, see :func:`train_flops`) x tokens/s / peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import TunelabError
from tunelab.models.loss import example_terms
from tunelab.recipes.bench.synthetic import length_summary, write_rows
from tunelab.results import peak_rss_mb, write_json

__all__ = [
    "ENGINES",
    "TrainBenchSpec",
    "bench_train",
    "heldout_loss",
    "matmul_peak",
    "train_flops",
]

ENGINES = ("tunelab", "hf", "hf-bf16")


@dataclass
class TrainBenchSpec:
    data: str  # JSONL of instruction rows
    out_dir: str
    model: str = "smollm2-135m-instruct"
    method: str = "lora"  # lora | full
    examples: int = 128  # training rows, one epoch
    val_examples: int = 48
    batch_size: int = 8
    max_length: int = 512
    lr: float | None = None  # None: 2e-4 for LoRA, 2e-5 for full
    warmup: float = 0.1
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                             "o_proj"])  # fmt: skip
    max_batch_tokens: int | None = 512  # tunelab only
    packing: bool = False  # tunelab only
    length_grouping: int = 4  # tunelab only
    threads: int = 0  # 0: every core
    seed: int = 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.method == "lora" else 2e-5)

    @property
    def steps(self) -> int:
        return -(-self.examples // self.batch_size)

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup * self.steps)


# ---- shared by every engine -------------------------------------------------------------


def load_rows(spec: TrainBenchSpec) -> tuple[Any, list[Encoded], list[Encoded]]:
    """Tokenizer, training and held-out rows, tokenised by tunelab's own pipeline."""
    from tunelab.config import Config
    from tunelab.models.loading import load_tokenizer
    from tunelab.recipes.setup import encode_splits, prepare_stage

    cfg = Config.model_validate({
        "name": "bench-data", "output_dir": spec.out_dir,
        "model": {"base": spec.model, "max_length": spec.max_length},
        "data": {"source": spec.data, "format": "instruction", "template": "instruction",
                 "max_train": spec.examples, "max_val": spec.val_examples,
                 "split": {"val": 0.1, "test": 0.0, "seed": spec.seed}},
    })  # fmt: skip
    prep = prepare_stage(cfg, cfg.run_dir, reuse=True)
    tokenizer = load_tokenizer(spec.model)
    task = encode_splits(cfg, prep, tokenizer)
    train, val = task.encoded["train"], task.encoded["val"]
    if len(train) < spec.examples:
        raise TunelabError(
            f"{spec.data} gives {len(train)} training rows; the benchmark needs {spec.examples}",
            hint="generate more rows (tunelab bench data --n) or lower --examples",
        )
    return tokenizer, train, val


@torch.no_grad()
def heldout_loss(lm: Any, items: Sequence[Encoded]) -> float:
    """Mean next-token cross-entropy over response tokens, one plain forward per example.

    Deliberately naive (full logits, no batching): the same yardstick for every engine.
    """
    lm.eval()
    device = next(lm.parameters()).device
    total, count = 0.0, 0
    for e in items:
        ids = torch.tensor([e.input_ids], device=device)
        logits = lm(input_ids=ids).logits[0, :-1].float()
        targets = torch.tensor(e.labels[1:], device=device)
        keep = targets != IGNORE
        total += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
        count += int(keep.sum())
    return total / max(count, 1)


def train_flops(config: Any, lengths: Sequence[int], response: Sequence[int], method: str,
                layers_params: int) -> float:  # fmt: skip
    """Useful FLOPs of one training pass over rows of these lengths.

    Forward: 2 x (parameters of the transformer blocks) per token, causal attention
    2 x 2 x d x (position) per token and layer, and the LM head (2 x d x V) only on response
    tokens (the only logits a loss needs). Backward: full fine-tuning 2x the forward (input
    and weight gradients); LoRA 1x (input gradients only: frozen weights need none; the
    adapters' own FLOPs are under 1% and not counted). Padding is never useful work.
    """
    d, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    forward = 0.0
    for length, resp in zip(lengths, response, strict=True):
        forward += 2 * layers_params * length
        forward += 4 * n_layers * d * length * (length - 1) / 2  # scores + values, causal
        forward += 2 * d * vocab * resp
    return forward * (3 if method == "full" else 2)


def matmul_peak(dtype: torch.dtype, max_size: int = 2048, seconds: float = 3.0) -> float:
    """Measured GFLOP/s of a square matmul on this machine's current thread count.

    The size grows from 256 until one product takes 20 ms (or reaches ``max_size``), so a
    dtype this CPU runs slowly (bf16 without native support) is measured in seconds too.
    The best of several short windows is kept: on a shared machine a neighbour's burst
    lowers one window, never raises it.
    """
    size = 256
    while True:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        start = time.perf_counter()
        torch.mm(a, b)
        if time.perf_counter() - start > 0.02 or size >= max_size:
            break
        size *= 2
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < seconds / 6:
            torch.mm(a, b)
            runs += 1
        best = max(best, 2 * size**3 * runs / (time.perf_counter() - start) / 1e9)
    return round(best, 1)


def _base(lm: Any) -> Any:
    """The transformers model under a peft wrapper (or ``lm`` itself)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def _layers_params(lm: Any) -> int:
    layers = _base(lm).get_decoder().layers
    return sum(p.numel() for n, p in layers.named_parameters() if "lora_" not in n)


# ---- engines (each runs in a child process) -------------------------------------------


def run_tunelab(spec: TrainBenchSpec, train: list[Encoded], val: list[Encoded],
                pad_id: int) -> dict[str, Any]:  # fmt: skip
    from tunelab.config.schema import TrainConfig
    from tunelab.models.loading import load_base
    from tunelab.models.precision import resolve_precision
    from tunelab.models.task_model import build_task_model
    from tunelab.training.metrics_log import MetricsLog
    from tunelab.training.setup import LoopSettings
    from tunelab.training.setup import train as train_model

    torch.manual_seed(spec.seed)
    precision = resolve_precision("auto", torch.device("cpu"))
    model = build_task_model(
        load_base(spec.model), kind="full" if spec.method == "full" else "lora", head="lm",
        lora_r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
        lora_targets=list(spec.lora_targets),
    )  # fmt: skip
    section = TrainConfig(
        batch_size=spec.batch_size, epochs=1.0, lr=spec.learning_rate, schedule="linear",
        warmup=spec.warmup_steps, max_grad_norm=1.0, eval_every=10**9, log_every=10,
        early_stopping=None, seed=spec.seed, max_batch_tokens=spec.max_batch_tokens,
        packing=spec.packing, length_grouping=spec.length_grouping,
    )  # fmt: skip
    settings = LoopSettings(section, precision, pad_id, row_tokens=spec.max_length)
    marks: dict[str, float] = {}

    def progress(event: dict[str, Any]) -> None:
        if "loss" in event and event["step"] == event["total"]:  # last step, before val
            marks["end"] = time.perf_counter()
            marks["rss"] = peak_rss_mb()

    work = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    start = time.perf_counter()
    state = train_model(model, train, val[:4], settings, checkpoints=work / "checkpoints",
                        config_yaml="", log=MetricsLog(work, tensorboard=False),
                        progress=progress)  # fmt: skip
    return {
        "train_seconds": marks["end"] - start,
        "peak_rss_mb": marks["rss"],
        "precision": precision,
        "settings": {
            "max_batch_tokens": spec.max_batch_tokens,
            "packing": spec.packing,
            "length_grouping": spec.length_grouping,
            "chunked_loss": True,
        },
        "padded_tokens": state.padded_tokens,
        "lm": model.lm,
    }


def worker(engine: str, spec_path: Path, out_path: Path) -> None:
    spec = TrainBenchSpec(**json.loads(spec_path.read_text()))
    torch.set_num_threads(spec.threads or os.cpu_count() or 1)
    tokenizer, train, val = load_rows(spec)
    train = train[: spec.examples]
    loaded_rss = peak_rss_mb()
    if engine == "tunelab":
        res = run_tunelab(spec, train, val, tokenizer.pad_token_id)
    elif engine in ("hf", "hf-bf16"):
        from tunelab.recipes.bench.peer_hf import train_with_trainer

        res = train_with_trainer(spec, train, tokenizer, bf16=engine == "hf-bf16")
    else:
        raise TunelabError(f"unknown engine {engine!r}", hint=f"one of {', '.join(ENGINES)}")
    lm = res.pop("lm")
    real = sum(e.length for e in train)
    res.update({
        "engine": engine,
        "real_tokens": real,
        "tokens_per_second": round(real / res["train_seconds"], 1),
        "padding_fraction": round(1 - real / res["padded_tokens"], 3),
        "train_seconds": round(res["train_seconds"], 1),
        "rss_after_loading_mb": loaded_rss,
        "heldout_loss": round(heldout_loss(lm, val), 4),
        "train_flops": train_flops(
            _base(lm).config, [e.length for e in train],
            [example_terms(e, "lm") for e in train], spec.method, _layers_params(lm),
        ),
    })  # fmt: skip
    write_json(out_path, res)


# ---- the benchmark ----------------------------------------------------------------------


def bench_train(spec: TrainBenchSpec, engines: Sequence[str],
                log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Run every engine in its own child process; compare them; return the result."""
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(spec.data).is_file():
        write_rows(Path(spec.data), max(4 * (spec.examples + spec.val_examples), 2000), spec.seed)
        log(f"wrote benchmark rows: {spec.data}")
    threads = spec.threads or os.cpu_count() or 1
    spec.threads = threads
    torch.set_num_threads(threads)
    _, train, _ = load_rows(spec)  # prepares once; the children reuse it
    train = train[: spec.examples]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    log(f"matmul peak on {threads} threads: fp32 {peaks['fp32']} GFLOP/s, "
        f"bf16 {peaks['bf16']} GFLOP/s")  # fmt: skip
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(asdict(spec), indent=2))
    results: dict[str, dict[str, Any]] = {}
    for engine in engines:
        log(f"training with {engine} ({spec.method}, {spec.examples} rows)...")
        path = out / f"engine-{engine}.json"
        path.unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "tunelab.recipes.bench.train_speed", engine, str(spec_path),
             str(path)],
            capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )  # fmt: skip
        if proc.returncode != 0 or not path.is_file():
            raise TunelabError(f"benchmark engine {engine} failed:\n{proc.stderr[-3000:]}")
        results[engine] = json.loads(path.read_text())
        r = results[engine]
        log(f"  {engine}: {r['tokens_per_second']} real tokens/s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MiB, held-out loss {r['heldout_loss']}")  # fmt: skip
    for r in results.values():
        peak = peaks["bf16" if r["precision"] == "bf16" else "fp32"]
        r["model_gflops_per_s"] = round(r["train_flops"] / r["train_seconds"] / 1e9, 1)
        r["mfu"] = round(r["train_flops"] / r["train_seconds"] / 1e9 / peak, 3)
    result: dict[str, Any] = {
        "method": spec.method,
        "spec": asdict(spec),
        "rows": length_summary([e.length for e in train]),
        "matmul_peak_gflops": peaks,
        "engines": results,
    }
    peers = [e for e in results if e != "tunelab"]
    if "tunelab" in results and peers:
        best = max(peers, key=lambda e: results[e]["tokens_per_second"])
        ours, theirs = results["tunelab"], results[best]
        result["versus_best_peer"] = {
            "peer": best,
            "speedup": round(ours["tokens_per_second"] / theirs["tokens_per_second"], 2),
            "rss_ratio": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
            "heldout_loss_delta": round(ours["heldout_loss"] - theirs["heldout_loss"], 4),
        }
    write_json(out / f"bench_train_{spec.method}.json", result)
    return result


if __name__ == "__main__":  # the child process of one engine
    worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
