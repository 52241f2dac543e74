"""Reproduce the forgetting study: naive full fine-tuning vs each mitigation vs LoRA.

    python examples/forgetting/study.py [--only NAME ...] [--threads N]

Runs ``naive.yaml`` and one variant per mitigation (config overrides below) with the same
data, steps and seed; then ``tunelab forgetting sweep`` over the naive run (WiSE). Writes
``runs/forgetting-study/study.json`` and ``study.md`` (the table in docs/forgetting.md).
A run whose results.json exists is not run again (delete it to re-run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.config import load_config
from tunelab.recipes.run import run_pipeline

HERE = Path(__file__).resolve().parent
FINE_ALPHAS = ["--set", "forgetting.sweep.alphas=[0.05, 0.1]"]
# mitigated runs that are also mixed with their start (WiSE composed with kd / LoRA)
COMPOSED = {
    "kd": ["--set", "forgetting.sweep.alphas=[0.5, 0.75]"],
    "lora": ["--set", "forgetting.sweep.alphas=[0.25, 0.5]"],
}
CONFIG = HERE / "naive.yaml"

# name -> overrides of naive.yaml (each mitigation alone, then LoRA)
VARIANTS: dict[str, list[str]] = {
    "naive": [],
    "kd": ["forgetting.mitigations.kd.strength=1.0"],
    "lora": ["method.kind=lora", "train.lr=5.0e-4"],
    "replay": ["forgetting.mitigations.replay.ratio=0.3"],
    "ewc": ["forgetting.mitigations.ewc.strength=1.0"],
    "si": ["forgetting.mitigations.si.strength=1.0"],
    "l2sp": ["forgetting.mitigations.l2sp.strength=1.0"],
}


VARIANT_SETS = {name: [x for o in overrides for x in ("--set", o)]
                for name, overrides in VARIANTS.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        # the base model's test accuracy is measured once, in the naive run
        base = [] if name == "naive" else ["eval.base=false"]
        threads = [f"train.threads={args.threads}", f"eval.threads={args.threads}"]
        cfg = load_config(CONFIG, [f"name=forgetting-{name}", *threads, *base, *overrides])
        done = cfg.run_dir / "results.json"
        if not done.is_file():
            print(f"== {name}: {' '.join(overrides) or 'as naive.yaml'}", flush=True)
            run_pipeline(cfg, events=lambda m: print(f"   {m}", flush=True))
        rows[name] = summarise(json.loads(done.read_text()), overrides)
    if not args.only or "wise" in args.only:
        naive = load_config(CONFIG, ["name=forgetting-naive"]).run_dir
        # the alphas of naive.yaml, then a finer look below the first of them
        for name, extra in (("forgetting_sweep.json", []),
                            ("forgetting_sweep_fine.json", FINE_ALPHAS)):  # fmt: skip
            sweep = naive / name
            if not sweep.is_file():
                command = [sys.executable, "-m", "tunelab.cli.main", "forgetting", "sweep",
                           str(CONFIG), "--set", "name=forgetting-naive", *extra,
                           "--out", str(sweep)]  # fmt: skip
                subprocess.run(command, check=True)
            rows.update(sweep_rows(json.loads(sweep.read_text())))
    # WiSE on top of a mitigated run (the sweeps named in COMPOSED), where they were run
    for name, extra in COMPOSED.items():
        run = load_config(CONFIG, [f"name=forgetting-{name}"]).run_dir
        sweep = run / "forgetting_sweep.json"
        if (run / "results.json").is_file() and not sweep.is_file():
            command = [sys.executable, "-m", "tunelab.cli.main", "forgetting", "sweep",
                       str(CONFIG), "--set", f"name=forgetting-{name}", *VARIANT_SETS[name],
                       *extra, "--out", str(sweep)]  # fmt: skip
            subprocess.run(command, check=True)
        if sweep.is_file():
            for key, row in sweep_rows(json.loads(sweep.read_text())).items():
                rows[f"{name} + {key}"] = row
    out = load_config(CONFIG, []).output_dir
    (out / "study.json").write_text(json.dumps(rows, indent=2))
    (out / "study.md").write_text(table(rows))
    print(table(rows))


def summarise(results: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    f = results["forgetting"]
    return {
        "setting": " ".join(overrides) or "naive.yaml",
        "accuracy": results["tuned"]["metrics"]["accuracy"],
        "base_accuracy": results.get("base", {}).get("metrics", {}).get("accuracy"),
        "retention": f["retention_score"],
        "retention_ci95": f["retention_ci95"],
        "probes": {k: p["retention"] for k, p in f["probes"].items()},
        "train_seconds": results["training"]["seconds"],
        # every variant runs in this one process: ru_maxrss is the largest so far, not this run's
    }


def sweep_rows(sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in sweep["rows"]:
        out[f"wise a={r['alpha']:.2f}"] = {
            "setting": f"forgetting sweep, alpha {r['alpha']}",
            "accuracy": r["metrics"]["accuracy"],
            "retention": r["retention_score"],
            "retention_ci95": r["retention_ci95"],
            "probes": r["probes"],
        }
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    probes = sorted({p for r in rows.values() for p in r["probes"]})
    head = ["run", "test acc", "retention [95% CI]", *probes, "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        lo, hi = r["retention_ci95"]
        cells = [name, f"{r['accuracy']:.3f}", f"{r['retention']:.3f} [{lo:.3f}, {hi:.3f}]"]
        cells += [_fmt(r["probes"].get(p)) for p in probes]
        seconds = r.get("train_seconds")
        cells.append("-" if seconds is None else f"{seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
