"""Kill -9 trials: a tiny-model training run killed at random moments resumes to the exact
weights of an uninterrupted run, and no kill ever leaves a half-written checkpoint.

    .venv/bin/python scripts/fault_trials.py --trials 20 --seed 0  # runs/faults/kill-trials.json

One uninterrupted run is the reference. Each trial then starts the same run, SIGKILLs it
1-3 times at seeded random moments (resuming with ``resume=True`` after each kill), lets the
last attempt finish, and compares the final weights with the reference bit for bit
(``torch.equal``: the last checkpoint's tensors and the exported ``model/`` adapter).
Right after every kill the checkpoints folder is inspected: ``latest.json`` parses, every
folder it names exists, every ``step-*`` folder is complete (all files, loadable tensors
and optimizer state, ``state.json`` of its own step); ``.tmp-*`` entries may exist and must
be gone once the run finishes.

Each attempt is ``tunelab train``'s code path (``run_pipeline`` with only the train stage)
run in a forked child of this process, so a trial costs no interpreter start; the kill is a
real ``SIGKILL`` of that child. Four kinds of moment, drawn per kill:

- ``step``: once training reaches a random step, after a random part of one step's time;
- ``save``: once a random step's checkpoint save has started, after a random part of one
  save's time (so kills land while files are written, renamed, pointed to or pruned);
- ``point``: the child SIGKILLs itself on entering one phase of a random step's save: before
  its files are written, after they are synced (before the rename), after the rename (before
  ``latest.json``), after ``latest.json`` (before pruning); windows of microseconds that
  timed kills from outside rarely hit;
- ``startup``: a random part of the time from start to the first step (data, model, restore).

Hooks on the checkpoint module record in shared memory which phase of a save the child was
in when it died (and deliver the ``point`` kills); they change nothing else. Kills never
land after the last checkpoint is pointed to (that state has a test of its own:
docs/faults.md). Linux only (fork, SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parents[1] / "tests"
PHASES = ["training", "files", "rename", "pointer", "prune"]  # index = shared phase value
MODES = ["step", "save", "point", "startup"]
STEP_FILES = ["trainable.safetensors", "optimizer.pt", "rng.pt", "state.json",
              "config.resolved.yaml"]  # fmt: skip
_fork = mp.get_context("fork")


@dataclass(frozen=True)
class Settings:
    steps: int = 30
    eval_every: int = 2  # a checkpoint every 2 steps: resumes redo the steps after it
    keep: int = 2  # keep_checkpoints: older folders are pruned while kills land
    max_kills: int = 3  # kills per trial: 1..max_kills
    timeout: float = 300.0  # seconds one attempt may take


@dataclass
class Timing:
    """The reference run's pace, which scales the random delays."""

    startup: float  # start to first step
    step: float  # mean seconds per step, saves included
    save: float  # mean seconds per checkpoint save


@dataclass
class Summary:
    trials: int = 0
    kills: int = 0
    kills_by_phase: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    kills_by_mode: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    kills_at_startup: int = 0  # died before its first step of this attempt
    kills_in_save: int = 0  # died inside save_checkpoint (files, rename, pointer, prune)
    finished_before_kill: int = 0  # the attempt ended before its planned kill
    resumes: int = 0
    checks_after_kill: int = 0  # checkpoint-folder inspections that passed
    temp_entries_after_kill: int = 0  # .tmp-* entries found (and later cleaned)
    identical: int = 0
    failures: list[str] = field(default_factory=list)
    kill_log: list[dict[str, Any]] = field(default_factory=list)  # one entry per kill
    seconds: float = 0.0
    reference_seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # the reference's pace (Timing)
    settings: dict[str, Any] = field(default_factory=dict)


# ---- the child: one attempt of `tunelab train` ------------------------------------------


@dataclass
class Shared:
    """Written by the child, read by the parent (also after the child died)."""

    step: Any  # last step whose progress callback ran
    phase: Any  # index into PHASES
    saved: Any  # step of the last completed save
    save_seconds: Any  # total seconds spent in saves
    saves: Any  # completed saves
    die_step: Any  # with die_phase: the child kills itself on entering this save phase
    die_phase: Any

    @classmethod
    def new(cls, die_step: int = -1, die_phase: str = "training") -> Shared:
        ints = [_fork.Value("i", 0, lock=False) for _ in range(3)]
        return cls(*ints, _fork.Value("d", 0.0, lock=False), _fork.Value("i", 0, lock=False),
                   _fork.Value("i", die_step, lock=False),
                   _fork.Value("i", PHASES.index(die_phase), lock=False))  # fmt: skip


def _attempt(config_path: Path, resume: bool, shared: Shared, log_path: Path) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _observe_saves(shared)
    from tunelab.config import load_config
    from tunelab.recipes.run import Stages, run_pipeline

    def progress(event: dict[str, Any]) -> None:
        if "loss" in event:
            shared.step.value = int(event["step"])

    cfg = load_config(config_path)
    run_pipeline(cfg, stages=Stages(base_eval=False, train=True, tuned_eval=False),
                 resume=resume, progress=progress)  # fmt: skip


def _observe_saves(shared: Shared) -> None:
    """Record the save phase in ``shared`` by wrapping the checkpoint module's own steps;
    at the planned ``(die_step, die_phase)`` the child SIGKILLs itself on entering it."""
    from tunelab.training import checkpoint as ck
    from tunelab.training import loop

    saving = {"step": -1}

    def enter(phase: str) -> None:
        shared.phase.value = PHASES.index(phase)
        if (saving["step"], phase) == (shared.die_step.value, PHASES[shared.die_phase.value]):
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn: Any, phase: str, after: str | None = None) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            enter(phase)
            out = fn(*args, **kwargs)
            if after is not None:
                enter(after)
            return out

        return wrapped

    real_save, real_prune = ck.save_checkpoint, ck._prune

    def save(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        saving["step"] = kwargs["state"].step
        enter("files")
        out = real_save(*args, **kwargs)
        shared.save_seconds.value += time.perf_counter() - start
        shared.saves.value += 1
        saving["step"] = -1
        return out

    def prune(root: Path, pointer: dict[str, str | None], keep: int) -> None:
        enter("prune")
        real_prune(root, pointer, keep)
        shared.saved.value = int(str(pointer["last"]).split("-")[1])
        shared.phase.value = PHASES.index("training")

    ck._fsync_tree = wrap(ck._fsync_tree, "files", after="rename")  # files written, synced
    ck._write_json_atomic = wrap(ck._write_json_atomic, "pointer")  # folder renamed
    ck._prune = prune  # pointer replaced
    ck.save_checkpoint = save
    loop.save_checkpoint = save  # type: ignore[assignment]  # the loop imported the name


# ---- the parent: kills and checks -------------------------------------------------------


def _start(config_path: Path, resume: bool, log_path: Path,
           plan: dict[str, Any] | None = None) -> tuple[Any, Shared]:  # fmt: skip
    point = plan is not None and plan["mode"] == "point"
    shared = Shared.new(plan["step"], plan["phase"]) if point else Shared.new()
    proc = _fork.Process(target=_attempt, args=(config_path, resume, shared, log_path))
    proc.start()
    return proc, shared


def _wait(proc: Any, timeout: float) -> int:
    proc.join(timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise RuntimeError(f"attempt {proc.pid} took longer than {timeout:.0f} s")
    return int(proc.exitcode)


def _kill_at(proc: Any, shared: Shared, plan: dict[str, Any], total: int, started: float,
             timeout: float) -> bool:  # fmt: skip
    """Wait for the planned moment and SIGKILL the child; False if it ended first."""
    deadline = time.monotonic() + timeout
    armed_at: float | None = None
    if plan["mode"] == "point":  # the child kills itself at the planned phase
        proc.join(timeout)
        return proc.exitcode == -signal.SIGKILL
    while proc.is_alive() and time.monotonic() < deadline:
        now = time.monotonic()
        if armed_at is None:
            if plan["mode"] == "startup":
                armed_at = started
            elif shared.step.value >= plan["step"] and (
                plan["mode"] == "step" or shared.phase.value or shared.step.value > plan["step"]
            ):
                armed_at = now
        if armed_at is not None and now - armed_at >= plan["delay"]:
            if shared.step.value >= total and shared.phase.value in (0, 3, 4):
                return False  # the last checkpoint is (being) pointed to: see docs/faults.md
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            return True
        time.sleep(0.0002)
    if proc.is_alive():
        raise RuntimeError(f"attempt {proc.pid} never reached its kill moment {plan}")
    return False


def _plan(rng: random.Random, resume_step: int, s: Settings, timing: Timing) -> dict[str, Any]:
    """The moment of one kill (see the module docstring). Never after the last checkpoint is
    pointed to: that run has finished training (docs/faults.md, known gap)."""
    mode = rng.choices(MODES, weights=[3, 3, 3, 1])[0]
    saves = [k for k in range(s.eval_every, s.steps, s.eval_every) if k > resume_step]
    if mode in ("save", "point") and not saves:
        mode = "step"
    if mode == "point":
        phase = rng.choice(PHASES[1:])
        return {"mode": mode, "step": rng.choice(saves), "phase": phase, "delay": 0.0}
    step = rng.choice(saves) if mode == "save" else rng.randint(resume_step + 1, s.steps - 1)
    scale = {"step": timing.step, "save": timing.save, "startup": timing.startup}[mode]
    return {"mode": mode, "step": step, "delay": round(rng.uniform(0, scale), 5)}


def check_checkpoints(folder: Path) -> tuple[list[str], int]:
    """Problems of a checkpoints folder right after a kill, and its ``.tmp-*`` entry count."""
    from tunelab.errors import CheckpointError
    from tunelab.training.checkpoint import read_pointer

    if not folder.exists():
        return [], 0
    problems = []
    try:
        pointer = read_pointer(folder)
    except CheckpointError as exc:
        return [str(exc)], 0
    steps = sorted(p.name for p in folder.glob("step-*"))
    for key, name in pointer.items():
        if name is not None and name not in steps:
            problems.append(f"latest.json {key} names {name}, which does not exist")
    for name in steps:
        problems += [f"{name}: {p}" for p in _step_problems(folder / name)]
    return problems, len(list(folder.glob(".tmp-*")))


def _step_problems(folder: Path) -> list[str]:
    missing = [n for n in STEP_FILES if not (folder / n).is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    try:
        load_file(folder / "trainable.safetensors")
        torch.load(folder / "optimizer.pt", weights_only=False)
        torch.load(folder / "rng.pt", weights_only=False)
        state = json.loads((folder / "state.json").read_text())
    except Exception as exc:  # any unreadable file is what this check looks for
        return [f"unreadable: {type(exc).__name__}: {exc}"]
    if f"step-{state['step']:06d}" != folder.name:
        return [f"state.json says step {state['step']}"]
    return []


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's tensors and the exported adapter's, prefixed by their file."""
    from tunelab.training.checkpoint import read_pointer

    last = run / "checkpoints" / str(read_pointer(run / "checkpoints")["last"])
    tensors = {f"checkpoint/{k}": v for k, v in load_file(last / "trainable.safetensors").items()}
    for file in sorted((run / "model").glob("*.safetensors")):
        tensors.update({f"model/{file.name}/{k}": v for k, v in load_file(file).items()})
    return tensors


def _differences(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    if ref.keys() != got.keys():
        return [f"tensor names differ: {sorted(ref.keys() ^ got.keys())[:4]}"]
    return [name for name in ref if not torch.equal(ref[name], got[name])]


def _losses(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    timings = ("elapsed", "val_seconds")  # wall-clock values differ between runs
    return [{k: v for k, v in json.loads(x).items() if k not in timings} for x in lines if x]


# ---- trials -----------------------------------------------------------------------------


def trial_config(model_dir: Path, data: Path, out: Path, s: Settings) -> dict[str, Any]:
    """fp32, one thread, dropout on (so the resumed RNG matters), a checkpoint every
    ``s.eval_every`` steps."""
    sys.path.insert(0, str(TESTS))
    from conftest import tiny_config

    train = {"max_steps": s.steps, "eval_every": s.eval_every, "log_every": 1,
             "keep_checkpoints": s.keep}  # fmt: skip
    return tiny_config(model_dir, data, out, method={"lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
                       train=train, eval={"base": False, "report": False},
                       tracking={"tensorboard": False})  # fmt: skip


def run_trials(work: Path, trials: int, seed: int, s: Settings = Settings(),
               model_dir: Path | None = None, data: Path | None = None) -> Summary:  # fmt: skip
    """Run the reference and ``trials`` killed-and-resumed runs under ``work``."""
    started = time.perf_counter()
    sys.path.insert(0, str(TESTS))
    from conftest import build_tiny_model, write_sentiment_jsonl

    torch.set_num_threads(1)  # a forked child must not inherit a busy OpenMP pool
    # imported once here, not in every forked attempt (presidio: data preparation's PII scan)
    import presidio_analyzer  # noqa: F401

    import tunelab.recipes.run  # noqa: F401

    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_dir or build_tiny_model(work / "tiny-model")
    data = data or write_sentiment_jsonl(work / "sentiment.jsonl")
    (work / "logs").mkdir(exist_ok=True)
    summary = Summary(settings={**asdict(s), "trials": trials, "seed": seed})

    ref_run, timing = _reference(work, model_dir, data, s)
    summary.reference_seconds = round(time.perf_counter() - started, 1)
    summary.timing = {k: round(v, 4) for k, v in asdict(timing).items()}
    ref_weights, ref_losses = final_weights(ref_run), _losses(ref_run)
    rng = random.Random(seed)
    for t in range(trials):
        summary.trials += 1
        try:
            _trial(t, work, model_dir, data, s, timing, rng, summary, ref_weights, ref_losses)
        except Exception as exc:  # one trial's breakage is a result, not the end of the run
            summary.failures.append(f"trial {t}: {type(exc).__name__}: {exc}")
    summary.seconds = round(time.perf_counter() - started, 1)
    return summary


def _reference(work: Path, model_dir: Path, data: Path, s: Settings) -> tuple[Path, Timing]:
    cfg = trial_config(model_dir, data, work / "reference", s)
    path = work / "reference.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    proc, shared = _start(path, False, work / "logs" / "reference.log")
    first: float | None = None
    while proc.is_alive():
        if first is None and shared.step.value >= 1:
            first = time.monotonic()
        time.sleep(0.001)
    if proc.exitcode != 0:
        raise RuntimeError(f"the reference run failed; see {work / 'logs' / 'reference.log'}")
    end = time.monotonic()
    first = first or end
    timing = Timing(startup=first - start, step=(end - first) / max(s.steps - 1, 1),
                    save=shared.save_seconds.value / max(shared.saves.value, 1))  # fmt: skip
    return Path(cfg["output_dir"]) / cfg["name"], timing


def _trial(t: int, work: Path, model_dir: Path, data: Path, s: Settings, timing: Timing,
           rng: random.Random, summary: Summary, ref_weights: dict[str, torch.Tensor],
           ref_losses: list[dict[str, Any]]) -> None:  # fmt: skip
    from tunelab.training.checkpoint import read_pointer

    cfg = trial_config(model_dir, data, work / f"trial-{t:02d}", s)
    path = work / f"trial-{t:02d}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = Path(cfg["output_dir"]) / cfg["name"]
    checkpoints = run / "checkpoints"
    resume, finished = False, False
    for k in range(rng.randint(1, s.max_kills)):
        last = read_pointer(checkpoints).get("last") if checkpoints.exists() else None
        resume_step = int(str(last).split("-")[1]) if last else 0
        if resume_step >= s.steps - 1:
            break  # nothing left to kill
        plan = _plan(rng, resume_step, s, timing)
        log = work / "logs" / f"trial-{t:02d}-{k}.log"
        started = time.monotonic()
        proc, shared = _start(path, resume, log, plan)
        summary.resumes += resume
        if not _kill_at(proc, shared, plan, s.steps, started, s.timeout):
            summary.finished_before_kill += 1
            finished = _wait(proc, s.timeout) == 0
            if not finished:
                raise RuntimeError(f"attempt {k} failed without a kill; see {log}")
            break
        summary.kills += 1
        died = {"died_after_step": shared.step.value, "died_in": PHASES[shared.phase.value]}
        summary.kill_log.append({"trial": t, "attempt": k, **plan, **died})
        summary.kills_by_phase[PHASES[shared.phase.value]] += 1
        summary.kills_by_mode[plan["mode"]] += 1
        summary.kills_in_save += shared.phase.value != 0
        summary.kills_at_startup += shared.step.value == 0 and shared.phase.value == 0
        problems, temp = check_checkpoints(checkpoints)
        if problems:
            raise RuntimeError(f"after kill {k} ({plan}): {'; '.join(problems)}")
        summary.checks_after_kill += 1
        summary.temp_entries_after_kill += temp
        if shared.saved.value >= s.steps:
            raise RuntimeError(f"kill {k} landed after the last checkpoint; nothing to resume")
        resume = True
    if not finished:
        log = work / "logs" / f"trial-{t:02d}-final.log"
        proc, _ = _start(path, resume, log)
        summary.resumes += resume
        if _wait(proc, s.timeout) != 0:
            raise RuntimeError(f"the resumed run failed; see {log}")
    if leftovers := sorted(p.name for p in checkpoints.glob(".tmp-*")):
        raise RuntimeError(f"temporary entries left after the run finished: {leftovers}")
    if diff := _differences(ref_weights, final_weights(run)):
        raise RuntimeError(f"weights differ from the reference: {diff[:4]}")
    if _losses(run) != ref_losses:
        raise RuntimeError("metrics.jsonl differs from the reference run's")
    summary.identical += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--eval-every", type=int, default=Settings.eval_every)
    parser.add_argument("--max-kills", type=int, default=Settings.max_kills)
    parser.add_argument("--work", type=Path, default=Path("runs/faults/kill-trials"),
                        help="scratch folder for the runs (replaced)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/faults/kill-trials.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(args.work)
    settings = Settings(steps=args.steps, eval_every=args.eval_every, max_kills=args.max_kills)
    summary = run_trials(args.work, args.trials, args.seed, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    print(json.dumps(asdict(summary), indent=2))
    return 0 if summary.identical == summary.trials else 1


if __name__ == "__main__":
    sys.exit(main())
