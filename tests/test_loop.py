"""The training loop's arithmetic: gradient accumulation, step planning, early stopping.

Each test calls :func:`tunelab.training.setup.train` (setup, then the loop ``fit``) on
hand-built items."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.config.schema import EarlyStoppingConfig, TrainConfig
from tunelab.data.tokenize import Encoded
from tunelab.models.task_model import build_task_model
from tunelab.training.metrics_log import MetricsLog, read_metrics
from tunelab.training.setup import LoopSettings, plan_steps, train

BASE = dict(
    batch_size=4, grad_accum=1, epochs=1.0, max_steps=1, lr=1e-2, schedule="constant",
    warmup=0.0, weight_decay=0.0, max_grad_norm=None, eval_every=1, log_every=1,
    early_stopping=None, seed=0, keep_checkpoints=1, max_batch_tokens=None,
)  # fmt: skip


def _settings(row_tokens: int | None = None, **over) -> LoopSettings:
    """The ``train`` section as validated by the schema, fp32, pad id 0."""
    return LoopSettings(TrainConfig(**{**BASE, **over}), "fp32", 0, row_tokens=row_tokens)


def _items() -> list[Encoded]:
    # responses of different lengths: a per-micro-batch mean would weight tokens unequally
    return [Encoded(list(range(3, 3 + n)), prompt_len=2) for n in (5, 9, 4, 12)]


def _train(tmp_path, lm, name: str, **over) -> dict[str, torch.Tensor]:
    model = build_task_model(copy.deepcopy(lm), kind="full", head="lm")
    train(model, _items(), _items()[:2], _settings(**over),
          checkpoints=tmp_path / name, config_yaml="", log=MetricsLog(tmp_path / name,
          tensorboard=False))  # fmt: skip
    return {k: v.clone() for k, v in model.trainable_state().items()}


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # one step over all 4 examples either way; SGD-like check through AdamW's first step
    one = _train(tmp_path, lm, "one", batch_size=4, grad_accum=1)
    two = _train(tmp_path, lm, "two", batch_size=2, grad_accum=2)
    four = _train(tmp_path, lm, "four", batch_size=1, grad_accum=4)
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(one[name], four[name], rtol=1e-4, atol=1e-6)
    changed = sum(not torch.equal(one[n], lm.state_dict()[n.removeprefix("lm.")])
                  for n in one if n.removeprefix("lm.") in lm.state_dict())  # fmt: skip
    assert changed > 0


def test_plan_steps_from_epochs_and_accumulation():
    s = _settings(max_steps=None, batch_size=4, grad_accum=2, epochs=2.5)
    # 10 examples -> 3 micro-batches per epoch -> 7.5 micro-batches -> 4 optimizer steps
    assert plan_steps(10, s) == 4
    assert plan_steps(10, _settings(max_steps=7)) == 7
    # two processes share each step: 7.5 micro-batches / (2 x 2) -> 2 optimizer steps
    assert plan_steps(10, s, world=2) == 2


def test_early_stopping_stops_after_patience(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = build_task_model(lm, kind="full", head="lm")
    # a learning rate this large makes validation loss rise after the first step
    stop = EarlyStoppingConfig(patience=2)
    s = _settings(max_steps=50, lr=0.9, early_stopping=stop, eval_every=1)
    state = train(model, _items(), _items(), s, checkpoints=tmp_path / "c", config_yaml="",
                  log=MetricsLog(tmp_path, tensorboard=False))  # fmt: skip
    assert state.stopped == "early_stopping"
    assert state.step == state.best_step + 2
    vals = [m["val_loss"] for m in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in m]
    assert len(vals) == state.step
    assert min(vals) == pytest.approx(state.best_val)


def test_packing_and_token_caps_change_memory_not_the_update(tmp_path, tiny_model_dir):
    """The same optimizer step whether a batch runs whole, split by a token cap, or packed."""
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    whole = _train(tmp_path, lm, "whole", max_batch_tokens=None)
    capped = _train(tmp_path, lm, "capped", max_batch_tokens=16)  # 4 rows -> several pieces
    packed = _train(tmp_path, lm, "packed", packing=True, row_tokens=16, max_batch_tokens=16)
    for name in whole:
        torch.testing.assert_close(whole[name], capped[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(whole[name], packed[name], rtol=1e-4, atol=1e-6)


def test_mask_dropout_has_nn_dropout_statistics_and_replaces_it(tiny_model_dir):
    from tunelab.models.task_model import MaskDropout

    drop = MaskDropout(0.25).train()
    x = torch.ones(200_000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)  # inverted scaling keeps the mean
    torch.testing.assert_close(torch.unique(y), torch.tensor([0.0, 1 / 0.75]))
    assert torch.equal(drop.eval()(x), x)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = build_task_model(lm, kind="lora", head="lm", lora_dropout=0.1)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "MaskDropout" in kinds
    assert not any(
        isinstance(m, torch.nn.Dropout) for n, m in model.named_modules() if "lora_dropout" in n
    )


def test_every_loss_term_weighs_the_same_whatever_the_batch_it_lands_in(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A step's summed loss is divided by the epoch's mean terms per step (not its own)."""
    from tunelab.data.batching import collate, train_batches
    from tunelab.models.loss import batch_loss
    from tunelab.training import setup

    monkeypatch.setattr(
        setup, "build_optimizer", lambda m, lr, weight_decay: torch.optim.SGD(
            [p for p in m.parameters() if p.requires_grad], lr=1.0)
    )  # fmt: skip
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    items = _items()  # 3, 7, 2 and 10 response targets: 22 terms, 2 steps of 2 -> 11 per step
    model = build_task_model(copy.deepcopy(lm), kind="full", head="lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = train_batches([e.length for e in items], 2, seed=0, epoch=0)[0]
    loss_sum, n = batch_loss(model, collate([items[i] for i in first], 0))
    grads = torch.autograd.grad(loss_sum, list(model.parameters()), allow_unused=True)
    train(model, items, items[:1], _settings(batch_size=2),
          checkpoints=tmp_path / "c", config_yaml="",
          log=MetricsLog(tmp_path, tensorboard=False))  # fmt: skip
    assert n != 11  # the first step's own count differs from the mean
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        if g is not None:
            torch.testing.assert_close(before[name] - p.detach(), g / 11, rtol=1e-4, atol=1e-7)


def test_lora_layers_outside_the_model_is_a_config_error(tiny_model_dir):
    from tunelab.errors import ConfigError

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)  # 2 layers
    for layers in (3, 0, [2], []):
        with pytest.raises(ConfigError, match=r"method\.lora\.layers") as err:
            build_task_model(copy.deepcopy(lm), kind="lora", head="lm", lora_layers=layers)
        assert err.value.hint == "use an int 1..2 (top layers) or indices 0..1"
    model = build_task_model(lm, kind="lora", head="lm", lora_layers=2)  # all layers: fine
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_held_memory_counts_parameters_gradients_and_optimizer_state():
    from tunelab.training.optim import build_optimizer
    from tunelab.training.sharding import held_mb

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 256))
    model[1].requires_grad_(False)  # frozen: weights only, no gradient, no AdamW moments
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    assert held_mb(model, optimizer) == round((512 * 1024 + 1024 + 1024 * 256 + 256) * 4 / 2**20, 3)
    model(torch.randn(3, 512)).sum().backward()
    optimizer.step()
    trainable = 512 * 1024 + 1024
    expected = (trainable + 1024 * 256 + 256) * 4 + trainable * 4 * 3 + 2 * 4  # + 2 step counters
    assert held_mb(model, optimizer) == round(expected / 2**20, 3)
