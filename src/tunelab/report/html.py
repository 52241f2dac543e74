"""results.json → report.html: one self-contained page per run (inline CSS, inline PNGs).

The page needs no network and no JavaScript; every image is a ``data:`` URI, so the file
can be mailed, attached to a ticket or archived next to the model and still show everything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.report import sections as s
from tunelab.report._format import esc
from tunelab.results import Results, read_results

__all__ = ["RunFiles", "build_report", "read_run", "render_report"]

REPORT_NAME = "report.html"

CSS = """
:root { --fg: #1d232a; --muted: #5f6b76; --line: #d8dee4; --band: #f5f7f9; --accent: #1f6feb; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 36px 0 12px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
nav { color: var(--muted); margin-bottom: 8px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.subtitle { color: var(--muted); margin: 0 0 12px; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr));
           gap: 8px 20px; margin: 0 0 16px; }
dl.facts div { background: var(--band); border-radius: 6px; padding: 6px 10px; }
dt { color: var(--muted); font-size: 0.82em; }
dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 0.92em; }
caption { text-align: left; color: var(--muted); font-style: italic; padding-bottom: 4px;
          white-space: nowrap; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.wide { min-width: 13em; }
.table-wrap { overflow-x: auto; max-width: 100%; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font: 0.9em/1.4 ui-monospace,
      SFMono-Regular, Menlo, Consolas, monospace; }
details pre { background: var(--band); padding: 12px; border-radius: 6px; max-height: 480px;
              overflow: auto; }
details summary { cursor: pointer; color: var(--accent); }
img { max-width: 100%; height: auto; display: block; margin: 8px 0 16px; }
.absent { color: var(--muted); font-style: italic; }
.conclusion { font-weight: 600; background: #eef6ee; border-left: 4px solid #2ca02c;
              padding: 8px 12px; }
.samples.wrong caption { color: #b42318; }
.samples td:first-child { max-width: 620px; }
ul.warnings { color: #9a6700; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.85em; }
"""


@dataclass
class RunFiles:
    """What a run folder holds for the report; everything but ``results`` may be empty."""

    results: Results
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines
    config_text: str | None = None  # config.resolved.yaml
    val_samples: list[dict[str, Any]] = field(default_factory=list)  # val_samples.jsonl
    written: str | None = None  # when results.json was written (UTC)


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from the run folder's files and return its path.

    Reads results.json (required), metrics.jsonl, config.resolved.yaml and
    val_samples.jsonl (optional). The file is replaced atomically, so a reader never sees
    half a page.
    """
    page = render_report(read_run(Path(run_dir)))
    target = Path(run_dir) / REPORT_NAME
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


def read_run(run_dir: Path) -> RunFiles:
    """Load the report's inputs from a run folder; raise TunelabError without results.json
    (or with one that is not a results file of this or an older tunelab)."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise TunelabError(
            f"no results.json in {run_dir}",
            hint="run `tunelab run CONFIG` first, or pass the run folder (runs/<name>)",
        )
    results = read_results(path)
    config = run_dir / "config.resolved.yaml"
    written = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return RunFiles(
        results=results,
        records=_read_jsonl(run_dir / "metrics.jsonl"),
        config_text=config.read_text(encoding="utf-8") if config.is_file() else None,
        val_samples=_read_jsonl(run_dir / "val_samples.jsonl"),
        written=written.strftime("%Y-%m-%d %H:%M UTC"),
    )


def render_report(run: RunFiles) -> str:
    """The whole page as one string (pure: no file access)."""
    r = run.results
    name = r.run or "unnamed run"
    body = [
        s.header_section(r, run.written),
        s.config_section(run.config_text),
        s.data_section(r.data),
        s.training_section(r.training, run.records, run.val_samples),
        s.metrics_section(r.base, r.tuned),
        s.compare_section(r.compare),
        s.forgetting_section(r.forgetting),
        s.calibration_section(r.calibration),
        s.predictions_section(r.tuned),
    ]
    nav = " ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title in s.SECTIONS)
    subtitle = _subtitle(r)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no favicon request, not even for file://
            f"<title>tunelab report: {esc(name)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            f"<header><h1>tunelab report: {esc(name)}</h1>",
            f'<p class="subtitle">{esc(subtitle)}</p>' if subtitle else "",
            f"<nav>{nav}</nav></header>",
            "<main>",
            *body,
            "</main>",
            f"<footer>Generated by tunelab {esc(__version__)} from results.json; regenerate with "
            "<code>tunelab report RUN_FOLDER</code>.</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _subtitle(results: Results) -> str:
    parts = [
        results.model.base if results.model else "",
        results.method.kind if results.method else "",
    ]
    return " · ".join(p for p in parts if p)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The object lines of a JSON-lines file; [] when absent. Lines that do not parse are
    skipped: the last line of a log that a running job is still writing may be incomplete."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
