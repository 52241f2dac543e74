"""HTML building blocks for the report: escaping by default, number formats, tables, sections.

Every cell, fact and caption goes through :func:`esc` unless it is wrapped in :class:`Safe`
(markup built here from already escaped parts), so text from user data (prompts,
predictions, label names, file names) can never inject markup.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard

__all__ = [
    "ABSENT",
    "Safe",
    "absent",
    "as_dict",
    "bullets",
    "ci_text",
    "esc",
    "facts",
    "fmt",
    "fmt_metric",
    "fmt_seconds",
    "image",
    "is_number",
    "join",
    "opt",
    "pre",
    "section",
    "table",
    "unit",
]

ABSENT = "not measured in this run"


class Safe(str):
    """A string of markup that is already escaped; :func:`esc` passes it through."""

    __slots__ = ()


def esc(value: Any) -> Safe:
    """``value`` as HTML text: escaped (quotes included) unless it is already :class:`Safe`."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape(str(value), quote=True))


def is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any) -> str:
    """A compact human form: thousands separators for ints, 4 significant digits for floats,
    ``yes``/``no`` for bools, an em dash for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    return str(value)


def fmt_metric(value: Any, *, signed: bool = False) -> str:
    """A metric value with three decimals (``+`` sign for deltas); other values via :func:`fmt`."""
    if is_number(value):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return fmt(value)


def ci_text(ci: Any) -> str:
    """``[lo, hi]`` for a two-number interval, an empty string otherwise."""
    pair = isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if pair and all(is_number(x) for x in ci) else ""


def fmt_seconds(seconds: Any) -> str:
    """``709.3`` → ``11 min 49 s``; under a minute, seconds with one decimal."""
    if not is_number(seconds):
        return fmt(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    wide: Iterable[int] = (),
    caption: str | None = None,
) -> Safe:
    """An HTML table; columns whose index is in ``numeric`` are right-aligned, those in
    ``wide`` get room for a sentence; an empty cell shows an em dash."""
    classes = {i: "num" for i in numeric} | {i: "wide" for i in wide}

    def cls(i: int) -> str:
        return f' class="{classes[i]}"' if i in classes else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{cls(i)}>{esc(c if c != '' else '—')}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    title = f"<caption>{esc(caption)}</caption>" if caption else ""
    return Safe(
        f'<div class="table-wrap"><table>{title}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def facts(items: Mapping[str, Any]) -> Safe:
    """A definition list of the items whose value is not None."""
    rows = "".join(
        f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items.items() if v is not None
    )
    return Safe(f'<dl class="facts">{rows}</dl>') if rows else Safe("")


def image(png: bytes, alt: str) -> Safe:
    """The PNG inlined as a ``data:`` URI, so the report stays one self-contained file."""
    data = base64.b64encode(png).decode("ascii")
    return Safe(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">')


def absent(detail: str | None = None) -> Safe:
    """The note a section shows when its data is not in the run folder."""
    text = f"{ABSENT} ({detail})" if detail else ABSENT
    return Safe(f'<p class="absent">{esc(text)}</p>')


def section(anchor: str, title: str, *parts: str) -> Safe:
    """``<section id=anchor><h2>title</h2>…</section>``; parts must already be Safe markup."""
    body = "\n".join(esc(p) for p in parts if p)
    return Safe(f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>')


def opt(value: Any, form: Callable[[Any], str] = fmt) -> str | None:
    """``form(value)``, or None (the fact is left out) when the value is absent."""
    return None if value is None else form(value)


def unit(value: Any, suffix: str) -> str | None:
    """``"16 examples"`` for ``unit(16, "examples")``; None when the value is absent."""
    return f"{fmt(value)} {suffix}" if value is not None else None


def join(*parts: str | None, sep: str = ", ") -> str | None:
    """The present (non-empty) parts joined; None when none is present."""
    kept = [p for p in parts if p]
    return sep.join(kept) if kept else None


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a mapping, else ``{}`` (results.json parts may be absent or null)."""
    return dict(value) if isinstance(value, Mapping) else {}


def pre(text: Any) -> Safe:
    """Escaped text that keeps its line breaks (prompts, predictions)."""
    return Safe(f"<pre>{esc(text)}</pre>")


def bullets(items: Any) -> Safe | str:
    """A list of warnings or notes; nothing when there are none."""
    if not items:
        return ""
    return Safe('<ul class="warnings">' + "".join(f"<li>{esc(x)}</li>" for x in items) + "</ul>")
