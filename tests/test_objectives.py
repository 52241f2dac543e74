"""Training objectives: one contract over every registered objective, and the distillation
loss checked against a hand computation."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunelab.config.schema import TrainConfig
from tunelab.data.batching import collate
from tunelab.data.tokenize import Encoded
from tunelab.errors import ConfigError, TrainingError
from tunelab.models.task_model import TaskModel, build_task_model
from tunelab.training.metrics_log import MetricsLog, read_metrics
from tunelab.training.objectives import OBJECTIVES, Objective, get_objective
from tunelab.training.objectives.distill import GENERAL
from tunelab.training.setup import LoopSettings, train


def _items(n: int = 6, *, general: bool | None = None) -> list[Encoded]:
    """Examples with responses of different lengths; marked task/general when asked."""
    out = []
    for i in range(n):
        e = Encoded(list(range(3 + i, 10 + 3 * i)), prompt_len=4, class_index=i % 2)
        if general is not None:
            e = replace(e, extras={GENERAL: float(general and i % 3 == 0)})
        out.append(e)
    return out


def _build(name: str, lm: Any) -> tuple[Objective, TaskModel, list[Encoded]]:
    """Each registered objective with a model it trains and examples it reads."""
    torch.manual_seed(0)
    if name == "classifier":
        model = build_task_model(copy.deepcopy(lm), kind="full", head="classifier",
                                 label_token_ids=[5, 9])  # fmt: skip
        return get_objective(name), model, [e.prompt_only() for e in _items()]
    model = build_task_model(copy.deepcopy(lm), kind="full", head="lm")
    if name == "distill":
        teacher = TaskModel(copy.deepcopy(lm), "lm")
        return get_objective(name, teacher=teacher, general=0.3), model, _items(general=True)
    return get_objective(name), model, _items()


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_keeps_the_contract(name, tiny_model_dir, tmp_path):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    objective, model, items = _build(name, lm)
    assert objective.name == name
    objective.prepare(model, items)
    assert all(objective.terms(e) > 0 for e in items)
    batch = collate(items, 0)
    assert all(field in batch for field in objective.fields)  # collated from Encoded.extras
    total, terms, logs = objective.loss(model, batch)
    assert total.ndim == 0 and total.requires_grad and torch.isfinite(total)
    assert terms == pytest.approx(sum(objective.terms(e) for e in items))  # known before
    assert list(logs) == list(objective.log_names)
    through_forward, _, _ = model(batch, objective.loss)  # what the loop (and DDP) runs
    torch.testing.assert_close(through_forward, total)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    section = TrainConfig(max_steps=3, batch_size=2, lr=1e-2, eval_every=3, log_every=1,
                          early_stopping=None, max_batch_tokens=None)  # fmt: skip
    state = train(model, items, items[:2], LoopSettings(section, "fp32", 0),
                  checkpoints=tmp_path / "c", config_yaml="", objective=objective,
                  log=MetricsLog(tmp_path, tensorboard=False))  # fmt: skip
    assert state.step == 3 and state.stopped == "completed"
    lines = read_metrics(tmp_path / "metrics.jsonl")
    losses = [m["loss"] for m in lines if "loss" in m]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert all(f"loss.{n}" in lines[0] for n in objective.log_names)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_an_unknown_objective_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown training objective 'dpo'") as err:
        get_objective("dpo")
    assert "lm, classifier, distill" in str(err.value.hint)


def test_the_distill_loss_is_kl_at_t_and_ce_mixed_by_alpha_and_share(tiny_model_dir):
    """Hand computation with full logits: per response position i,
    ℓ_i = α T² KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) CE(z_s, y_i), weighted
    (1 − g) N / N_task on task positions and g N / N_gen on general ones."""
    torch.manual_seed(0)
    student_lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    teacher_lm = copy.deepcopy(student_lm)
    with torch.no_grad():  # a different teacher, so the KL is not zero
        for p in teacher_lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student, teacher = TaskModel(student_lm, "lm"), TaskModel(teacher_lm, "lm")
    alpha, temperature, share = 0.7, 2.0, 0.25
    objective = get_objective("distill", teacher=teacher, alpha=alpha, temperature=temperature,
                              general=share)  # fmt: skip
    items = _items(6, general=True)  # examples 0 and 3 are general
    objective.prepare(student, items)
    batch = collate(items, 0)
    total, terms, logs = objective.loss(student, batch)

    # by hand: full (B, T, V) logits, every response position, plain torch
    with torch.no_grad():
        z_s = student_lm(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        z_t = teacher_lm(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    n_general = sum(e.length - e.prompt_len for e in items if e.extras[GENERAL])
    n_task = sum(e.length - e.prompt_len for e in items if not e.extras[GENERAL])
    n = n_task + n_general
    w = {False: (1 - share) * n / n_task, True: share * n / n_general}
    expected, expected_terms, kl_sum = 0.0, 0.0, 0.0
    for row, e in enumerate(items):
        for t in range(e.prompt_len - 1, e.length - 1):  # position t predicts token t + 1
            p_t = F.softmax(z_t[row, t] / temperature, dim=-1)
            log_p_s = F.log_softmax(z_s[row, t] / temperature, dim=-1)
            kl = float((p_t * (p_t.log() - log_p_s)).sum())
            ce = float(F.cross_entropy(z_s[row, t][None], torch.tensor([e.input_ids[t + 1]])))
            weight = w[bool(e.extras[GENERAL])]
            expected += weight * (alpha * temperature**2 * kl + (1 - alpha) * ce)
            expected_terms += weight
            kl_sum += weight * kl
    assert expected_terms == pytest.approx(n)  # the weights add up to the unweighted count
    assert terms == pytest.approx(expected_terms)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert logs["kl"] == pytest.approx(kl_sum, rel=1e-5)
    # the general positions carry a share g of the summed weights, whatever their count
    general_weight = sum(
        w[True] for e in items if e.extras[GENERAL] for _ in range(e.length - e.prompt_len)
    )
    assert general_weight / expected_terms == pytest.approx(share)


def test_training_refuses_examples_without_the_objectives_fields(tiny_model_dir, tmp_path):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    objective, model, _ = _build("distill", lm)
    section = TrainConfig(max_steps=1, early_stopping=None)
    with pytest.raises(TrainingError, match="lack the fields \\['general'\\]"):
        train(model, _items(), _items()[:1], LoopSettings(section, "fp32", 0),
              checkpoints=tmp_path / "c", config_yaml="", objective=objective,
              log=MetricsLog(tmp_path, tensorboard=False))  # fmt: skip
    with pytest.raises(TrainingError, match="packed rows do not carry"):
        train(model, _items(general=True), _items()[:1],
              LoopSettings(TrainConfig(max_steps=1, packing=True), "fp32", 0),
              checkpoints=tmp_path / "c", config_yaml="", objective=objective,
              log=MetricsLog(tmp_path, tensorboard=False))  # fmt: skip
