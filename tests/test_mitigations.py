"""Forgetting mitigations: one contract matrix for every registered one, plus hand-computed math.

The matrix runs each mitigation with full fine-tuning and with LoRA on the tiny model,
calling the hooks in the training loop's order. The hand checks use a two-parameter model
whose gradients have a closed form.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.config import parse_config
from tunelab.config.forgetting_section import (
    EwcConfig,
    KdConfig,
    MitigationsConfig,
    ReplayConfig,
    SiConfig,
)
from tunelab.data.batching import collate
from tunelab.data.tokenize import Encoded
from tunelab.errors import ConfigError, TrainingError
from tunelab.forgetting.mitigations import (
    MITIGATIONS,
    Context,
    Mitigation,
    build_mitigations,
)
from tunelab.forgetting.mitigations.base import seeded_stream
from tunelab.forgetting.mitigations.ewc import EWC, diagonal_fisher
from tunelab.forgetting.mitigations.kd import KD, chunked_kl
from tunelab.forgetting.mitigations.l2sp import weighted_distance
from tunelab.forgetting.mitigations.replay import Replay, replay_count
from tunelab.forgetting.mitigations.si import IMPORTANCE_FILE, SI, PathIntegral, path_importance
from tunelab.forgetting.mitigations.wise import interpolate
from tunelab.models.loss import batch_loss, lm_nll
from tunelab.models.task_model import TaskModel, build_task_model
from tunelab.training.hooks import trainable_params

# small settings so every mitigation runs in well under a second on the tiny model
OPTIONS: dict[str, dict] = {
    "replay": {"ratio": 0.25},
    "ewc": {"samples": 4},
    "si": {"general_steps": 3},
    "l2sp": {"strength": 0.5},
    "kd": {"batch_size": 2},
    "wise": {"alpha": 0.5},
}
NO_PENALTY = {"replay", "wise"}  # act on the data or after training only
KINDS = ["full", "lora"]

GENERAL_TEXT = [
    "the film was very fun and the story was a charming one",
    "a messy plot and the acting is tedious",
    "the movie is brilliant and the story is superb",
    "review the following text and answer with one word",
    "the acting was dull and the film was lifeless",
    "a wonderful story and a very moving film",
    "the plot is bland and the movie was boring",
    "classify the sentiment of the following movie review",
]
TASK = [
    ("classify: the film was great", "positive"),
    ("classify: the plot was awful", "negative"),
    ("classify: a moving story", "positive"),
    ("classify: very dull acting", "negative"),
]


# ---- fixtures and loop helpers ----------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def general(tok) -> list[Encoded]:
    """LM text: every token after the first is a target."""
    return [Encoded(tok(t)["input_ids"], prompt_len=0) for t in GENERAL_TEXT]


@pytest.fixture(scope="module")
def task(tok) -> list[Encoded]:
    out = []
    for prompt, answer in TASK:
        p = tok(prompt)["input_ids"]
        out.append(Encoded(p + tok(answer)["input_ids"] + [tok.eos_token_id], prompt_len=len(p)))
    return out


def _model(lm, kind: Any, head: Any = "lm", **kw) -> TaskModel:
    torch.manual_seed(0)  # LoRA's A matrices
    labels = [5, 6] if head == "classifier" else None
    return build_task_model(copy.deepcopy(lm), kind=kind, head=head, label_token_ids=labels,
                            lora_r=4, lora_alpha=8, lora_dropout=0.0, **kw)  # fmt: skip


def _ctx(model: TaskModel, general: list[Encoded], tok, **kw) -> Context:
    anchor = {n: p.detach().clone() for n, p in model.trainable_state().items()}
    settings = dict(pad_id=tok.pad_token_id, batch_size=2, precision="fp32", seed=0, lr=1e-2)
    return Context(general=general, anchor=anchor, **{**settings, **kw})


def _options(spec: dict[str, dict | None]) -> MitigationsConfig:
    """``forgetting.mitigations`` validated by the config schema, as a run builds it."""
    return parse_config({"forgetting": {"mitigations": spec}}).forgetting.mitigations


def _build(name: str) -> Mitigation:
    return MITIGATIONS[name](getattr(_options({name: OPTIONS[name]}), name))


def _step(
    model: TaskModel,
    mitigations: Sequence[Mitigation],
    optimizer: torch.optim.Optimizer,
    step: int,
    items: list[Encoded],
    pad_id: int,
    observers: Sequence[Mitigation] = (),
) -> float:
    """One optimizer step in the loop's order; ``observers`` see the hooks but add no loss."""
    loss_sum, terms = batch_loss(model, collate(items, pad_id))
    (loss_sum / terms).backward()
    for m in mitigations:
        pen = m.penalty(model, step)
        if pen is not None:
            pen.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    for m in [*mitigations, *observers]:
        m.before_step(model)
    optimizer.step()
    for m in [*mitigations, *observers]:
        m.after_step(model)
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item() / terms


def _start(name: str, kind: str, lm, general, task, tok):
    """A prepared mitigation on a fresh model, as the loop sets it up."""
    model = _model(lm, kind)
    ctx = _ctx(model, general, tok)
    m = _build(name)
    train = m.train_examples(list(task), ctx)
    m.prepare(model, ctx)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, ctx, m, train, optimizer


def _train(model, ms, optimizer, train, pad_id, steps: int, first: int = 1) -> list[float]:
    return [
        _step(model, ms, optimizer, s, train[(2 * s) % len(train) :][:2] or train[:2], pad_id)
        for s in range(first, first + steps)
    ]


# ---- the contract matrix ----------------------------------------------------------------

MATRIX = pytest.mark.parametrize(
    ("name", "kind"), [(n, k) for n in MITIGATIONS for k in KINDS]
)  # fmt: skip


@MATRIX
def test_penalty_is_zero_at_the_start(name, kind, lm, general, task, tok):
    model, ctx, m, _, _ = _start(name, kind, lm, general, task, tok)
    # prepare leaves the weights at the start (SI walks a path and must come back exactly)
    for n, p in trainable_params(model).items():
        assert torch.equal(p.detach(), ctx.anchor[n]), n
        assert p.grad is None, n
    pen = m.penalty(model, 1)
    if name in NO_PENALTY:
        assert pen is None
    else:
        assert pen is not None and pen.item() == 0.0


@MATRIX
def test_penalty_grows_away_from_start_and_reaches_only_trainable(
    name, kind, lm, general, task, tok
):
    model, _, m, train, optimizer = _start(name, kind, lm, general, task, tok)
    _train(model, [m], optimizer, train, tok.pad_token_id, steps=2)
    pen = m.penalty(model, 3)
    if name in NO_PENALTY:
        assert pen is None
        return
    assert pen is not None and pen.item() > 0
    pen.backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert (kind == "lora") == bool(frozen)  # LoRA freezes the base; full trains everything
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in trainable_params(model).values()
    )
    teacher = getattr(m, "teacher", None)  # KD's full-FT teacher stays frozen
    assert teacher is None or all(p.grad is None for p in teacher.parameters())


@MATRIX
def test_state_dict_round_trip_resumes_exactly(name, kind, lm, general, task, tok, tmp_path):
    model, ctx, m, train, optimizer = _start(name, kind, lm, general, task, tok)
    _train(model, [m], optimizer, train, tok.pad_token_id, steps=2)
    state = m.state_dict()
    assert all(isinstance(k, str) and v.device.type == "cpu" and v.is_contiguous()
               for k, v in state.items())  # fmt: skip
    save_file(state, tmp_path / "extra.safetensors")  # what the checkpoint does
    resumed = _build(name)
    resumed.load_state_dict(load_file(tmp_path / "extra.safetensors"))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    resumed.prepare(model, ctx)  # the loop calls prepare after load_state_dict
    for n, p in model.named_parameters():  # prepare on resume never touches the weights
        assert torch.equal(p.detach(), weights[n]), n

    def penalty(x: Mitigation, step: int) -> float | None:
        pen = x.penalty(model, step)
        return None if pen is None else pen.item()

    assert penalty(m, 3) == penalty(resumed, 3)
    # one more step seen by both: their states and penalties stay identical
    _step(model, [m], optimizer, 3, train[:2], tok.pad_token_id, observers=[resumed])
    assert penalty(m, 4) == penalty(resumed, 4)
    after, again = m.state_dict(), resumed.state_dict()
    assert after.keys() == again.keys()
    for k in after:
        assert torch.equal(after[k], again[k]), k


@MATRIX
def test_hooks_run_in_loop_order(name, kind, lm, general, task, tok, tmp_path):
    model, _, m, train, optimizer = _start(name, kind, lm, general, task, tok)
    losses = _train(model, [m], optimizer, train, tok.pad_token_id, steps=3)
    facts = m.finish(model, tmp_path)
    assert all(math.isfinite(x) for x in losses)
    assert isinstance(facts, dict)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_every_mitigation_at_once(kind, lm, general, task, tok, tmp_path):
    model = _model(lm, kind)
    ctx = _ctx(model, general, tok)
    ms = build_mitigations(_options(OPTIONS))
    assert [m.name for m in ms] == list(MITIGATIONS)  # wise last: interpolates after SI
    train = list(task)
    for m in ms:
        train = m.train_examples(train, ctx)
        m.prepare(model, ctx)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = _train(model, ms, optimizer, train, tok.pad_token_id, steps=3)
    facts: dict = {}
    for m in ms:
        facts.update(m.finish(model, tmp_path))
    assert all(math.isfinite(x) for x in losses)
    assert (tmp_path / IMPORTANCE_FILE).is_file() and facts["wise_alpha"] == 0.5


# ---- registry and options ---------------------------------------------------------------


def test_registry_order_and_errors():
    assert list(MITIGATIONS) == ["replay", "ewc", "si", "l2sp", "kd", "wise"]
    # the registry and the schema name the same mitigations: each option is declared once
    assert set(MitigationsConfig.model_fields) == set(MITIGATIONS)
    built = build_mitigations(_options({"wise": {}, "ewc": {"strength": 2.0}, "l2sp": {}}))
    assert [type(m).__name__ for m in built] == ["EWC", "L2SP", "WiSE"]
    assert built[0].strength == 2.0 and built[0].samples == 64  # the schema's defaults
    with pytest.raises(ConfigError) as err:
        _options({"ewk": {}})
    assert "forgetting.mitigations.ewk" in str(err.value) and "'ewc'" in str(err.value)
    with pytest.raises(ConfigError, match=r"forgetting\.mitigations\.si\.dampng.*'damping'"):
        _options({"si": {"dampng": 0.1}})
    with pytest.raises(ConfigError) as err:
        _options({"ewc": {"samples": 0, "strength": -1}})
    assert "forgetting.mitigations.ewc.samples" in str(err.value)
    assert "forgetting.mitigations.ewc.strength" in str(err.value)  # every problem at once
    with pytest.raises(ConfigError, match=r"wise\.alpha"):
        _options({"wise": {"alpha": 1.5}})


# ---- hand-computed checks on a two-parameter model -------------------------------------


class _TwoParams(torch.nn.Module):
    """ℓ(x, y, c) = (a·x − y)² + b²·c; ∂ℓ/∂a = 2x(a·x − y), ∂ℓ/∂b = 2·b·c."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def loss(self, x: float, y: float, c: float) -> torch.Tensor:
        return (self.a * x - y) ** 2 + self.b**2 * c


def test_ewc_fisher_equals_mean_squared_per_sample_gradient():
    model = _TwoParams(0.3, -0.7)
    samples = [(1.0, 2.0, 0.5), (2.0, -1.0, 1.0), (-1.0, 0.5, 2.0)]
    params = dict(model.named_parameters())
    fisher = diagonal_fisher(params, [partial(model.loss, *s) for s in samples])
    # by hand: g_a = 2x(0.3x − y) = −3.4, 6.4, 1.6; g_b = 2(−0.7)c = −0.7, −1.4, −2.8
    # F_a = (11.56 + 40.96 + 2.56) / 3 = 18.36; F_b = (0.49 + 1.96 + 7.84) / 3 = 3.43
    assert fisher["a"].item() == pytest.approx(18.36, rel=1e-6)
    assert fisher["b"].item() == pytest.approx(3.43, rel=1e-6)
    assert model.a.grad is None and model.b.grad is None  # autograd.grad leaves .grad alone


def test_si_path_integral_of_two_sgd_steps():
    model = _TwoParams(1.0, 0.5)
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    path = PathIntegral(params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model.loss(2.0, 1.0, 3.0).backward()
        path.before(params)
        optimizer.step()
        path.after(params)
    # by hand, x=2, y=1, c=3, lr=0.1; SGD makes −g·Δθ = lr·g²:
    # step 1 at (1, 0.5): g = (4, 3) → (0.6, 0.2); ω = (1.6, 0.9)
    # step 2 at (0.6, 0.2): g = (0.8, 1.2) → (0.52, 0.08); ω = (1.664, 1.044)
    assert path.omega["a"].item() == pytest.approx(1.664, rel=1e-6)
    assert path.omega["b"].item() == pytest.approx(1.044, rel=1e-6)
    omega = path_importance(path.omega, start, params, damping=0.1)
    # Ω = ω / (Δ² + ξ): Δa = −0.48, Δb = −0.42
    assert omega["a"].item() == pytest.approx(1.664 / (0.48**2 + 0.1), rel=1e-6)
    assert omega["b"].item() == pytest.approx(1.044 / (0.42**2 + 0.1), rel=1e-6)


def test_weighted_distance_value_and_gradient_match_autograd():
    torch.manual_seed(0)
    p = {"x": torch.randn(3, 4, dtype=torch.float64, requires_grad=True)}
    anchor = {"x": torch.randn(3, 4, dtype=torch.float64)}
    weight = {"x": torch.rand(3, 4, dtype=torch.float64)}
    ours = weighted_distance(p, anchor, weight)
    (grad,) = torch.autograd.grad(ours, [p["x"]])
    ref = (weight["x"] * (p["x"] - anchor["x"]) ** 2).sum()  # the formula, plain autograd
    (ref_grad,) = torch.autograd.grad(ref, [p["x"]])
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=0)  # fp32 accumulation
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=0)


# ---- EWC and SI on the tiny model -------------------------------------------------------


def test_ewc_normalised_fisher_has_mean_one(lm, general, tok):
    model = _model(lm, "full")
    ewc = EWC(EwcConfig(samples=4))
    ewc.prepare(model, _ctx(model, general, tok))
    assert ewc.fisher is not None and ewc.raw_mean > 0 and ewc.used == 4
    total = sum(float(f.double().sum()) for f in ewc.fisher.values())
    count = sum(f.numel() for f in ewc.fisher.values())
    assert total / count == pytest.approx(1.0, rel=1e-5)
    assert model.training  # eval mode only while estimating


def test_lm_nll_equals_batch_loss_for_an_lm_head(lm, general):
    model = TaskModel(copy.deepcopy(lm), "lm")
    batch = collate(general[:3], pad_id=0)
    ours, n = lm_nll(model, batch)
    ref, m = batch_loss(model, batch)
    assert n == m and torch.equal(ours, ref)


def test_si_previous_round_protects_what_it_learned(lm, general, task, tok, tmp_path):
    # round 1: a consolidation path, a few task steps, importances written by finish
    model = _model(lm, "full")
    ctx = _ctx(model, general, tok)
    first = SI(SiConfig(general_steps=2))
    first.prepare(model, ctx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, [first], optimizer, list(task), tok.pad_token_id, steps=2)
    facts = first.finish(model, tmp_path / "round1")
    assert facts["si_matched_previous"] == 0
    saved = load_file(tmp_path / "round1" / IMPORTANCE_FILE)
    assert saved.keys() == ctx.anchor.keys()
    # a file with one tensor of another shape and one unknown name: both are ignored
    names = sorted(saved)
    saved[names[0]] = torch.ones(3)
    saved["lm.not.a.parameter"] = torch.ones(2)
    (tmp_path / "edited").mkdir()
    save_file(saved, tmp_path / "edited" / IMPORTANCE_FILE)

    # round 2: only the previous importances (no consolidation path, no normalisation)
    model2 = _model(lm, "full")
    ctx2 = _ctx(model2, general, tok)
    second = SI(SiConfig(general_steps=0, normalize=False, previous=str(tmp_path / "edited")))
    second.prepare(model2, ctx2)
    assert second.matched == len(names) - 1
    flat = {n: saved[n].flatten() for n in names[1:]}
    high = max(flat, key=lambda n: float(flat[n].max()))
    low = min(flat, key=lambda n: float(flat[n].min()))
    params = trainable_params(model2)

    def moved_penalty(name: str, pick) -> tuple[float, float]:
        """Move one entry by 0.01 from the start; the penalty and that entry's Ω."""
        index = int(pick(flat[name]))
        with torch.no_grad():
            params[name].view(-1)[index] += 0.01
        pen = second.penalty(model2, 1).item()
        with torch.no_grad():
            params[name].copy_(ctx2.anchor[name])
        return pen, float(flat[name][index])

    pen_high, omega_high = moved_penalty(high, torch.argmax)
    pen_low, omega_low = moved_penalty(low, torch.argmin)
    assert omega_high > omega_low and pen_high > pen_low
    assert pen_high == pytest.approx(omega_high * 0.01**2, rel=1e-3)  # strength·Ω·δ²
    assert second.finish(model2, tmp_path / "round2")["si_matched_previous"] == len(names) - 1


def test_si_refuses_a_consolidation_path_away_from_the_start(lm, general, tok):
    model = _model(lm, "full")
    ctx = _ctx(model, general, tok)
    with torch.no_grad():
        next(iter(trainable_params(model).values())).add_(1.0)
    with pytest.raises(TrainingError, match="not at its starting weights"):
        SI(SiConfig(general_steps=1)).prepare(model, ctx)


# ---- WiSE -------------------------------------------------------------------------------


def test_wise_endpoints_are_exact_and_midpoint_is_halfway(lm, general, task, tok):
    model, ctx, _, train, optimizer = _start("l2sp", "full", lm, general, task, tok)
    _train(model, [], optimizer, train, tok.pad_token_id, steps=2)
    trained = {n: p.detach().clone() for n, p in trainable_params(model).items()}
    for alpha, expected in [(1.0, trained), (0.0, ctx.anchor)]:
        work = copy.deepcopy(model)
        interpolate(work, ctx.anchor, alpha)
        for n, p in trainable_params(work).items():
            assert torch.equal(p.detach(), expected[n]), (alpha, n)
    interpolate(model, ctx.anchor, 0.5)
    for n, p in trainable_params(model).items():
        torch.testing.assert_close(p.detach(), (ctx.anchor[n] + trained[n]) / 2)


def test_wise_halves_the_merged_lora_delta(lm, general, task, tok):
    model, ctx, _, train, optimizer = _start("wise", "lora", lm, general, task, tok)
    _train(model, [], optimizer, train, tok.pad_token_id, steps=2)
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    before = [m.get_delta_weight("default").clone() for m in layers]
    assert any(d.abs().sum() > 0 for d in before)
    interpolate(model, ctx.anchor, 0.5)
    for layer, delta in zip(layers, before, strict=True):
        # B' = 0 + 0.5·B exactly (lerp from B = 0), so B'·A = 0.5·(B·A) exactly
        assert torch.equal(layer.get_delta_weight("default"), 0.5 * delta)
    interpolate(model, ctx.anchor, 0.0)
    assert all(m.get_delta_weight("default").abs().sum() == 0 for m in layers)


# ---- replay -----------------------------------------------------------------------------


def test_replay_ratio_arithmetic_and_determinism(lm, general, tok):
    assert replay_count(30, 0.25) == 10  # 10 / (30 + 10) = 0.25
    assert replay_count(8, 0.2) == 2
    assert replay_count(10, 0.5) == 10
    train = [Encoded([1, 2, 3], prompt_len=1, class_index=i) for i in range(30)]
    pool = general[:3]
    ctx = Context(general=pool, pad_id=0, batch_size=2, precision="fp32", seed=0)
    replay = Replay(ReplayConfig(ratio=0.25))
    mixed = replay.train_examples(train, ctx)
    assert len(mixed) == 40 and mixed[:30] == train
    drawn = [pool.index(e) for e in mixed[30:]]
    assert sorted(drawn[:3]) == [0, 1, 2]  # every pool example once before any repeats
    assert sorted(drawn.count(i) for i in range(3)) == [3, 3, 4]  # a small pool is cycled
    assert (
        Replay(ReplayConfig(ratio=0.25)).train_examples(train, ctx) == mixed
    )  # seeded: the same list
    other = Replay(ReplayConfig(ratio=0.25)).train_examples(
        train, Context(**{**vars(ctx), "seed": 1})
    )
    assert other != mixed
    own = [Encoded([7, 8, 9], prompt_len=1)]
    with_replay = Replay(ReplayConfig(ratio=0.25)).train_examples(
        train, Context(**{**vars(ctx), "replay": own})
    )
    assert with_replay[30:] == own * 10  # ctx.replay is preferred over ctx.general


def test_replay_refuses_a_classifier_head(lm, general, tok):
    model = _model(lm, "lora", head="classifier")
    with pytest.raises(ConfigError, match=r"method\.head: lm"):
        Replay(ReplayConfig()).prepare(model, _ctx(model, general, tok))


def test_seeded_stream_is_a_pure_function_of_its_position():
    whole = seeded_stream(5, 12, seed=3, stream="kd")
    assert sorted(whole[:5]) == sorted(whole[5:10]) == list(range(5))
    assert seeded_stream(5, 4, seed=3, stream="kd", start=6) == whole[6:10]
    assert seeded_stream(5, 12, seed=3, stream="si") != whole


# ---- KD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kd_teacher_is_the_starting_model(kind, lm, general, task, tok):
    base = copy.deepcopy(lm).eval()
    model, _, kd, train, optimizer = _start("kd", kind, lm, general, task, tok)
    assert isinstance(kd, KD)
    pen = kd.penalty(model, 1)
    assert pen is not None and pen.item() == 0.0  # before training student == teacher
    _train(model, [kd], optimizer, train, tok.pad_token_id, steps=3)
    batch = kd.general_batch(model, 7)
    selected = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = base.lm_head(hidden.last_hidden_state[:, :-1][selected])
        student = model.lm_head(
            model.hidden(batch["input_ids"], batch["attention_mask"])[:, :-1][selected]
        )
    teacher = kd.teacher_logits(model, batch)
    torch.testing.assert_close(teacher, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(student, expected, atol=1e-4)  # the student did move
    assert kd.teacher is None if kind == "lora" else kd.teacher is not None  # LoRA: no copy
    assert model.training


def test_kd_batches_are_step_indexed(lm, general, tok):
    model = _model(lm, "lora")
    kd = KD(KdConfig(batch_size=3))
    kd.prepare(model, _ctx(model, general, tok))
    again = KD(KdConfig(batch_size=3))
    again.prepare(model, _ctx(model, general, tok))
    for step in (1, 2, 9):
        a, b = kd.general_batch(model, step), again.general_batch(model, step)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(kd.general_batch(model, 1)["input_ids"][:, :4],
                           kd.general_batch(model, 2)["input_ids"][:, :4])  # fmt: skip


def test_state_files_hold_plain_tensors(tmp_path: Path, lm, general, task, tok):
    model = _model(lm, "full")
    ctx = _ctx(model, general, tok)
    ewc = EWC(EwcConfig(samples=2))
    ewc.prepare(model, ctx)
    state = ewc.state_dict()
    assert {k for k in state if not k.startswith("fisher.")} == {"fisher_mean", "samples"}
    assert {k.removeprefix("fisher.") for k in state if k.startswith("fisher.")} == set(ctx.anchor)


def test_chunked_kl_matches_the_formula_in_any_chunking():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11)
    h_s = torch.randn(10, 8, requires_grad=True)
    h_t = torch.randn(10, 8)
    temperature = 2.0
    # reference: Σ_rows Σ_v p_t (log p_t − log p_s), computed on all rows at once
    log_t = F.log_softmax(head(h_t).detach() / temperature, dim=-1)
    log_s = F.log_softmax(head(h_s) / temperature, dim=-1)
    ref = (log_t.exp() * (log_t - log_s)).sum()
    (ref_grad,) = torch.autograd.grad(ref, [h_s])
    for chunk in (3, 100):  # recomputed chunks, and one chunk
        value = chunked_kl(head, head, h_s, h_t, temperature, chunk=chunk)
        (grad,) = torch.autograd.grad(value, [h_s])
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
