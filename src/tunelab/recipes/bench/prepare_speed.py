"""``tunelab bench prepare``: the whole data stage on generated messy rows, timed.

The rows are the benchmark's instruction rows (:mod:`tunelab.recipes.bench.synthetic`) with
problems planted at known rates, so the run also shows that each stage finds them:

==================  =====  ====================================================
planted             share  how
==================  =====  ====================================================
exact duplicate     3%     an earlier row again, with other case and spacing
near duplicate      3%     an earlier row with one word of the output changed
personal data       4%     an e-mail, phone number or card number in the input
HTML                1%     the output wrapped in ``<p>``/``<br>`` markup
mojibake            1%     UTF-8 text decoded as Windows-1252 (``cafÃ©``)
invalid row         0.5%   the output missing, or a line that is not JSON
==================  =====  ====================================================

Preparation runs in a child process so its peak RSS is its own. ``gb`` instead writes a
file of at least that many GB of distinct rows (no planted problems) to show that memory
stays bounded by the rows kept, not the bytes read; near dedupe is off there (its cost is
per row, measured by the 100k run).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections import Counter
from pathlib import Path
from queue import Empty
from typing import Any

from tunelab.recipes.bench.synthetic import instruction_rows
from tunelab.results import peak_rss_mb

__all__ = ["bench_prepare", "write_big", "write_messy"]

PLANTED = {"exact": 0.03, "near": 0.03, "pii": 0.04, "html": 0.01, "mojibake": 0.01,
           "invalid": 0.005}  # fmt: skip
_POOL = 20_000  # distinct base rows; the rest are variants of them


def _variant(row: dict[str, str], i: int) -> dict[str, str]:
    """A distinct row: a request number and a varied closing make it no near duplicate."""
    closing = ("Thanks!", "Please be brief.", "Answer in full sentences.", "Be concise.")
    return {**row, "instruction": f"{row['instruction']} (request {i}) {closing[i % 4]}"}


def _distinct_rows(n: int, seed: int) -> list[dict[str, str]]:
    """The benchmark's instruction rows, each question/answer row merged with two other
    pairs (the corpus has only 2,025 pairs, so single pairs would mostly be duplicates)."""
    rng = random.Random(seed + 1)
    rows = instruction_rows(n, seed)
    qa = [r for r in rows if r["task"] == "qa"]
    for j, row in enumerate(rows):
        if row["task"] == "qa":
            pairs = [row, *rng.sample(qa, 2)]
            rows[j] = {
                "instruction": "Answer each question.\n"
                + "\n".join(f"{i}. {p['instruction']}" for i, p in enumerate(pairs, 1)),
                "input": "",
                "output": "\n".join(f"{i}. {p['output']}" for i, p in enumerate(pairs, 1)),
            }
    return rows


def write_messy(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """``n`` JSONL rows with the planted problems above; returns how many of each."""
    rng = random.Random(seed)
    pool = _distinct_rows(n, seed)
    planted: Counter[str] = Counter()
    written: list[dict[str, str]] = []
    kinds, weights = zip(*PLANTED.items(), strict=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(pool[i])
            row.pop("task", None)
            kind = rng.choices([*kinds, "clean"], [*weights, 1 - sum(weights)])[0]
            if kind in ("exact", "near") and not written:
                kind = "clean"
            if kind == "exact":
                row = dict(rng.choice(written))
                row["instruction"] = "  " + row["instruction"].upper() + " "
            elif kind == "near":
                row = dict(rng.choice(written))
                words = row["output"].split(" ")
                if len(words) < 12:  # too short for one word to keep Jaccard high
                    kind, row = "clean", {k: v for k, v in pool[i].items() if k != "task"}
                else:
                    words[rng.randrange(len(words))] = "changed"
                    row["output"] = " ".join(words)
            elif kind == "pii":
                row["input"] = (row["input"] + " " + _pii(rng)).strip()
            elif kind == "html":
                row["output"] = f"<p>{row['output']}</p><br/>&nbsp;<b>end</b>"
            elif kind == "mojibake":
                row["output"] = row["output"] + " café naïve"
                row["output"] = row["output"].encode("utf-8").decode("cp1252", errors="replace")
            elif kind == "invalid":
                if rng.random() < 0.5:
                    fh.write('{"instruction": "broken line", "output": \n')
                    planted[kind] += 1
                    continue
                row.pop("output")
            planted[kind] += 1
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            if kind not in ("exact", "near", "invalid"):
                written.append(row)
    return dict(planted)


def _pii(rng: random.Random) -> str:
    user = "".join(rng.choice("abcdefghijklmnop") for _ in range(7))
    choice = rng.randrange(3)
    if choice == 0:
        return f"Contact me at {user}@example.org."
    if choice == 1:
        return f"Call me on +1 415 555 {rng.randrange(1000, 9999)}."
    return "My card is 4111 1111 1111 1111."


def write_big(path: Path, gb: float, seed: int = 0) -> int:
    """Distinct rows until the file holds at least ``gb`` GB; returns the row count."""
    pool = instruction_rows(_POOL, seed)
    target = int(gb * 1e9)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        while fh.tell() < target:
            row = _variant(pool[n % len(pool)], n)
            row.pop("task", None)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _child(path: str, folder: str, model: str, near: bool, queue: Any) -> None:
    from tunelab.data.ingest import CleanSpec
    from tunelab.data.prepare import DataSpec, SplitSpec, prepare
    from tunelab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    steps = ("unicode", "whitespace", "html")
    spec = DataSpec.single(
        path, format="instruction", validation="lenient", max_rejected=0.2,
        clean=CleanSpec(steps=steps, near_threshold=0.85 if near else None),
        split=SplitSpec(leakage="near" if near else "exact"),
    )  # fmt: skip
    start = time.perf_counter()
    prep = prepare(spec, Path(folder), tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    card = prep.card
    queue.put({"seconds": round(seconds, 1), "peak_rss_mb": peak_rss_mb(),
               "stages_s": card["timings_s"], "rows_in": card["rows_in"],
               "rows_kept": card["rows_kept"], "splits": card["splits"],
               "dropped": card["tasks"]["data"]["dropped"],
               "pii_found": card["pii"]["found"] if card["pii"] else {}})  # fmt: skip


def bench_prepare(
    workdir: Path, *, n: int = 100_000, gb: float | None = None, seed: int = 0,
    model: str = "smollm2-135m-instruct",
) -> dict[str, Any]:  # fmt: skip
    """Generate the rows, prepare them in a child process, report time, memory, counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ("big.jsonl" if gb else "messy.jsonl")
    start = time.perf_counter()
    planted: dict[str, int] = {}
    if gb:
        rows = write_big(path, gb, seed)
    else:
        planted = write_messy(path, n, seed)
        rows = n
    generate_s = time.perf_counter() - start
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(str(path), str(workdir / "data"), model,
                                                 gb is None, queue))  # fmt: skip
    child.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive():
                raise RuntimeError(
                    f"the preparation process died (exit {child.exitcode})"
                ) from None
    child.join()
    size = path.stat().st_size
    if gb:
        path.unlink()
    return {"rows": rows, "file_mb": round(size / 2**20, 1), "generate_s": round(generate_s, 1),
            "near_dedupe": gb is None, "planted": planted, **result,
            "rows_per_second": round(rows / result["seconds"]),
            "rss_per_file_mb": round(result["peak_rss_mb"] / (size / 2**20), 3)}  # fmt: skip
