"""Two rounds of fine-tuning closed by user feedback, end to end on the embedded model.

    python examples/feedback_loop/loop.py [--requests 200] [--held-out 100] [--port 8765]

(from the repository root; paths in the configs are relative to it)

1. ``tunelab run round1.yaml``: a short LoRA fine-tune on Rotten Tomatoes.
2. ``tunelab export``: round 1 merged into a standalone model (round 2 starts from it).
3. ``tunelab serve`` round 1 on loopback; a simulated user sends the first half of round 1's
   test reviews through the official ``openai`` client and rates every answer: up when it
   is right, down with the right answer as a correction when it is wrong.
4. ``tunelab feedback export``: confirmed answers and corrections become chat training
   rows (anonymised), poor answers with corrections become preference pairs.
5. ``tunelab run round2.yaml``: round 2 fine-tunes round 1's model on that data, with
   round 1's task measured as a retention probe and an L2-SP pull to round 1.
6. ``tunelab serve`` round 2; the same user sends the other half of the reviews (never
   seen in any training) to both rounds' servers, so their accuracy is compared on
   held-out traffic.

Writes ``runs/fl-loop.json``. Every step is a tunelab command a user would type; nothing
here reaches beyond 127.0.0.1. Run folders that exist are reused (delete them to re-run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

HERE = Path(__file__).resolve().parent
RUNS = Path("runs")
TUNELAB = [sys.executable, "-m", "tunelab"]
FEEDBACK_DB = RUNS / "fl-feedback.db"


def tunelab(*args: str) -> None:
    print("$ tunelab", " ".join(args), flush=True)
    subprocess.run([*TUNELAB, *args], check=True)


@contextmanager
def served(model: Path, port: int, *, log: bool):
    """A ``tunelab serve`` process on 127.0.0.1 for the duration of the block."""
    args = ["serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--no-auth",
            "--threads", "1", "--log-level", "warning"]  # fmt: skip
    args += ["--db", str(FEEDBACK_DB)] if log else ["--no-log"]
    print("$ tunelab", " ".join(args), flush=True)
    proc = subprocess.Popen([*TUNELAB, *args])
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server for {model} did not start")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def reviews(run: Path) -> list[dict[str, Any]]:
    """Round 1's test split as (prompt, expected answer): the simulated traffic."""
    rows = [json.loads(x) for x in (run / "data" / "test.jsonl").read_text().splitlines()]
    return [{"prompt": r["messages"][-1]["content"], "answer": r["response"]} for r in rows]


def ask(base_url: str, items: list[dict[str, Any]], *, feedback: bool) -> dict[str, Any]:
    """Send every prompt once (greedy); with ``feedback``, rate each answer like a user."""
    client = OpenAI(base_url=base_url, api_key="unused")
    right, sent, stored = 0, 0, 0
    for item in items:
        out = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": item["prompt"]}],
            max_tokens=4, temperature=0,
        )  # fmt: skip
        answer = (out.choices[0].message.content or "").strip().lower()
        ok = answer.startswith(item["answer"])
        right += ok
        if feedback:
            body = {"id": out.id, "rating": "up" if ok else "down"}
            if not ok:
                body["correction"] = item["answer"]
            r = httpx.post(f"{base_url}/feedback", json=body, timeout=30)
            sent += 1
            stored += r.status_code == 200
    return {"requests": len(items), "accuracy": right / max(len(items), 1),
            "feedback_sent": sent, "feedback_stored": stored}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="feedback requests (round 1)")
    parser.add_argument(
        "--held-out", type=int, default=100, help="held-out requests sent to each round at the end"
    )
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    round1, round2 = RUNS / "fl-round1", RUNS / "fl-round2"
    summary: dict[str, Any] = {}

    if not (round1 / "results.json").is_file():
        tunelab("run", str(HERE / "round1.yaml"))
    if not (round1 / "export" / "config.json").is_file():
        tunelab("export", str(round1), "--out", str(round1 / "export"), "--force")
    traffic = reviews(round1)
    half = min(args.requests, len(traffic) // 2)
    train_traffic, held_out = traffic[:half], traffic[half:][: args.held_out]

    if not (RUNS / "fl-feedback" / "train.jsonl").is_file():
        FEEDBACK_DB.unlink(missing_ok=True)
        with served(round1, args.port, log=True) as url:
            summary["round1_feedback"] = ask(url, train_traffic, feedback=True)
        tunelab("feedback", "stats", "--db", str(FEEDBACK_DB))
        tunelab("feedback", "export", "--db", str(FEEDBACK_DB), "--out", str(RUNS / "fl-feedback"))
    summary["export"] = json.loads((RUNS / "fl-feedback" / "export.json").read_text())

    if not (round2 / "results.json").is_file():
        tunelab("run", str(HERE / "round2.yaml"))
    results2 = json.loads((round2 / "results.json").read_text())
    summary["round2"] = {
        "tuned": results2.get("tuned", {}).get("metrics"),
        "base": results2.get("base", {}).get("metrics"),
        "round1_task_retention": results2.get("forgetting", {})
        .get("probes", {})
        .get("round1_task"),
    }

    for name, model in (("round1", round1), ("round2", round2)):
        with served(model, args.port, log=False) as url:
            summary[f"{name}_held_out"] = ask(url, held_out, feedback=False)
    out = RUNS / "fl-loop.json"
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
