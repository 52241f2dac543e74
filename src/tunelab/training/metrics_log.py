"""``metrics.jsonl`` (one JSON object per log line), TensorBoard scalars, other sinks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

__all__ = ["MetricsLog", "ScalarSink"]


class ScalarSink(Protocol):
    """Somewhere else the scalars go (``tunelab.report.tracking.MlflowSink``)."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...


class MetricsLog:
    """Append-only metrics file plus TensorBoard event files under ``tensorboard/``, and
    the same scalars to every ``sinks`` entry."""

    def __init__(
        self, run_dir: Path, *, tensorboard: bool = True, sinks: tuple[ScalarSink, ...] = ()
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sinks = sinks
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        step = int(record.get("step", 0))
        self.scalars(
            {k: float(v) for k, v in record.items()
             if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)},
            step,
        )  # fmt: skip

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars to TensorBoard and the sinks only (not ``metrics.jsonl``): the end-of-run
        summary of ``results.json``."""
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        for sink in self.sinks:
            sink.scalars(values, step)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run re-does those steps)."""
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
