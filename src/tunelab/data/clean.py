"""Text cleaners: small pure ``str -> str`` functions, applied in order by :func:`clean_text`.

========== ==============================================================================
name       what it does
========== ==============================================================================
unicode    repair mojibake (``cafÃ©`` → ``café``), C1 controls, ligatures and surrogates
           with ftfy, then NFC. Curly quotes, full-width forms and entities are left alone.
whitespace control characters out (``\\t`` and ``\\n`` stay), every line break to ``\\n``,
           odd spaces (no-break, em, ideographic...) to a space, runs of spaces and tabs
           inside a line to one space, trailing spaces cut, two or more blank lines to
           one, the text stripped. Indentation at the start of a line is kept (code):
           stripping removes only the indentation every line shares.
html       tags of known HTML elements out (``<br>``, ``<p>``, ``<li>``... become line
           breaks), ``<script>``/``<style>`` content, comments and doctypes dropped,
           entities unescaped. Text that is not HTML survives: ``a < b and c > d``,
           ``List<String>`` (``String`` is no HTML element).
========== ==============================================================================

Every cleaner is idempotent, and so is :func:`clean_text` for any list of steps: cleaning
a cleaned text changes nothing. Texts with nothing to clean take a fast path (plain ASCII
skips ftfy, text without ``<`` or ``&`` skips the HTML parser), so the common case costs
a few string scans.
"""

from __future__ import annotations

import difflib
import html
import re
import textwrap
import unicodedata
from collections.abc import Callable, Sequence
from html.parser import HTMLParser

import ftfy

from tunelab.errors import ConfigError

__all__ = [
    "CLEANERS",
    "DEFAULT_CLEANERS",
    "check_cleaners",
    "clean_text",
    "fix_unicode",
    "normalize_whitespace",
    "strip_html",
]

_MAX_ROUNDS = 4  # passes to reach a fixed point; two suffice in every case seen

# --- unicode -------------------------------------------------------------------------------

# Entities are the html cleaner's business (``&amp;`` in a code sample is content); curly
# quotes and full-width forms are typography, not damage; explanations cost time.
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False, uncurl_quotes=False, fix_character_width=False, explain=False
)
# ASCII controls that ftfy removes or rewrites (``\r`` to ``\n``, terminal escapes).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ASCII_PLAIN = bytes(range(0x20, 0x7F)) + b"\t\n"


def _ascii_controls(text: str) -> bytes:
    """The bytes of ASCII ``text`` other than printable ones, tab and newline (fast scan)."""
    return text.encode("ascii").translate(None, _ASCII_PLAIN)


# Non-ASCII characters that cannot start or end mojibake and that no ftfy step rewrites:
# in every single-byte encoding ftfy tries they are either absent or a UTF-8 byte of the
# wrong kind (cp1252: continuation bytes with no lead byte; MacRoman: lead bytes with no
# continuation byte), and NFC leaves them alone. English text often has only these.
_NOT_TYPOGRAPHY = re.compile("[^\x00-\x7f\u2018\u2019\u201c\u201d\u2013\u2014\u2026]")


def fix_unicode(text: str) -> str:
    """Mojibake repaired and NFC-normalised: ``ftfy.fix_text`` (entities, quotes and widths
    left alone), then NFC. Text with nothing ftfy could change is returned as is.

    ftfy fixes line by line, and a fix can join or split lines (``\u2028`` becomes
    ``\n``), which changes what the next call sees; so a text that changed goes through
    again until it stops changing (at most four times).
    """
    if text.isascii():
        if not _ascii_controls(text):
            return text
    elif not _NOT_TYPOGRAPHY.search(text) and not _ASCII_CONTROL.search(text):
        return text
    for _ in range(_MAX_ROUNDS):
        fixed = unicodedata.normalize("NFC", ftfy.fix_text(text, _FTFY_CONFIG))
        if fixed == text:
            break
        text = fixed
    return text


# --- whitespace ----------------------------------------------------------------------------

_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() breaks there
_ODD_SPACES = "".join(
    map(chr, (0x1F, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000))
)
_CONTROLS = "".join(
    chr(c)
    for c in (*range(0x20), *range(0x7F, 0xA0))
    if chr(c) not in "\t\n" + _LINE_BREAKS + _ODD_SPACES
)
_WS_TABLE = str.maketrans(
    dict.fromkeys(_LINE_BREAKS, "\n")
    | dict.fromkeys(_ODD_SPACES, " ")
    | dict.fromkeys(_CONTROLS + "\ufeff")
)
_WS_ODD = re.compile(f"[{re.escape(_LINE_BREAKS + _ODD_SPACES + _CONTROLS)}\ufeff]")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
# A run of spaces/tabs after the first visible character of a line that is not already one
# space. Trailing runs are gone by then, so every run found here ends before a character.
_INNER_RUN = re.compile(r"(?<=\S)(?:\t[ \t]*| [ \t]+)")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Controls removed, line breaks ``\\n``, spaces normalised, blank lines collapsed, stripped.

    - ``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``, NEL, U+2028/9 become ``\\n``
      (the breaks of ``str.splitlines``);
    - no-break, en/em/thin, ideographic and the other Unicode spaces become `` ``;
    - other C0/C1 controls and the byte-order mark are removed (``\\t`` and ``\\n`` stay);
    - inside a line, a run of spaces and tabs becomes one space; the indentation before a
      line's first visible character is kept, so code keeps its shape;
    - trailing spaces and tabs of every line are cut; three or more line breaks in a row
      (two or more blank lines) become one blank line;
    - the text is stripped: blank lines at both ends go, and the indentation all lines share
      (``textwrap.dedent``), so ``"  hi "`` is ``"hi"`` and an indented code block keeps
      its relative indentation.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if _ascii_controls(text) if text.isascii() else _WS_ODD.search(text):
        text = text.translate(_WS_TABLE)
    # substring tests are much cheaper than a regex scan, and usually say "nothing to do"
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("", text)
    if "  " in text or "\t" in text:
        text = _INNER_RUN.sub(" ", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    text = text.lstrip("\n").rstrip()
    return textwrap.dedent(text) if text[:1] in (" ", "\t") else text


# --- html ----------------------------------------------------------------------------------

# A line break before and after (blocks), before only (items), a space after (cells).
_BLOCK_NAMES = (
    "address article aside blockquote center dd details dialog div dl dt fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr main nav ol p pre section summary "
    "table tbody tfoot thead ul"
)
_BLOCK_TAGS = frozenset(_BLOCK_NAMES.split())
_ITEM_TAGS = frozenset({"br", "li", "tr", "option"})
_CELL_TAGS = frozenset({"td", "th"})
_DROP_CONTENT = frozenset({"script", "style"})
# Every other HTML element name, so that only real tags are stripped: ``List<String>``
# and ``<unk>`` are text, not markup.
_INLINE_NAMES = (
    "a abbr acronym area audio b base basefont bdi bdo big body button canvas caption cite "
    "code col colgroup data datalist del dfn em embed font frame frameset head html i iframe "
    "img input ins kbd label legend link map mark menu meta meter noscript object optgroup "
    "output param picture progress q rp rt ruby s samp search select slot small source span "
    "strike strong sub sup svg template textarea time title track tt u var video wbr"
)
_INLINE_TAGS = frozenset(_INLINE_NAMES.split())
_KNOWN_TAGS = _BLOCK_TAGS | _ITEM_TAGS | _CELL_TAGS | _DROP_CONTENT | _INLINE_TAGS
_MAX_HTML_ROUNDS = 8  # "&amp;lt;p&amp;gt;" needs three rounds to reach a fixed point


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment; see :func:`strip_html` for what goes where."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._dropping = 0  # open <script>/<style> elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _KNOWN_TAGS:
            self.handle_data(self.get_starttag_text() or "")
        elif tag in _DROP_CONTENT:
            self._dropping += 1
        elif tag in _BLOCK_TAGS or tag in _ITEM_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _KNOWN_TAGS:
            self.handle_data(self.get_starttag_text() or "")
        elif tag in _BLOCK_TAGS or tag in _ITEM_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag not in _KNOWN_TAGS:
            self.handle_data(f"</{tag}>")
        elif tag in _DROP_CONTENT:
            self._dropping = max(0, self._dropping - 1)
        elif tag in _BLOCK_TAGS or tag == "br":
            self.parts.append("\n")
        elif tag in _CELL_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._dropping:
            self.parts.append(data)


def _strip_html_once(text: str) -> str:
    if "<" not in text:
        return html.unescape(text)
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def strip_html(text: str) -> str:
    """The text of an HTML fragment, read with :class:`html.parser.HTMLParser`.

    Tags of known HTML elements are removed: block elements (``p``, ``div``, ``h1``...,
    ``ul``, ``table``...) put a line break before and after, ``<br>``, ``<li>`` and ``<tr>``
    one before, table cells a space after. The content of ``<script>`` and ``<style>``,
    comments, doctypes and processing instructions are dropped. Entities are unescaped
    (as HTML5 does, so ``&copy`` without ``;`` is ``©`` too). A ``<`` that starts no tag
    (``a < b``, ``x <3``) and tags of unknown elements (``List<String>``, ``<unk>``) stay
    as text; a known element name still counts as a tag (``a<b and c>d`` loses
    ``<b and c>``). Whitespace is left to the ``whitespace`` cleaner.

    Entities can hide markup (``&lt;p&gt;``), so the parse repeats until the text stops
    changing: the result reads the same as HTML and as text. Text without ``<`` or ``&`` is
    returned as is.
    """
    for _ in range(_MAX_HTML_ROUNDS):
        if "<" not in text and "&" not in text:
            break
        cleaned = _strip_html_once(text)
        if cleaned == text:
            break
        text = cleaned
    return text


# --- registry ------------------------------------------------------------------------------

CLEANERS: dict[str, Callable[[str], str]] = {
    "unicode": fix_unicode,
    "whitespace": normalize_whitespace,
    "html": strip_html,
}
DEFAULT_CLEANERS: tuple[str, ...] = ("unicode", "whitespace")


def check_cleaners(names: Sequence[str]) -> None:
    """Raise ConfigError naming ``data.clean.steps`` for every unknown cleaner name."""
    problems = []
    for i, name in enumerate(names):
        if name in CLEANERS:
            continue
        close = difflib.get_close_matches(name, list(CLEANERS), n=1, cutoff=0.5)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        problems.append((f"data.clean.steps.{i}", f"unknown cleaner '{name}'{guess}"))
    if problems:
        raise ConfigError(
            "data.clean.steps names text cleaners",
            problems=problems,
            hint=f"cleaners: {', '.join(CLEANERS)}",
        )


def clean_text(text: str, steps: Sequence[str]) -> str:
    """``text`` through the cleaners named in ``steps``, in order.

    One cleaner can hand the next something the earlier one would still change (``html``
    unescaping ``&#13;`` into a ``\\r`` after ``whitespace`` ran), so the steps repeat until
    a pass changes nothing (at most four passes; one when nothing changes, two in the usual
    case). Hence ``clean_text(clean_text(t, s), s) == clean_text(t, s)``. Unknown names
    raise ``KeyError``; validate them first with :func:`check_cleaners`.
    """
    fns = [CLEANERS[name] for name in steps]
    for _ in range(_MAX_ROUNDS):
        before = text
        for fn in fns:
            text = fn(text)
        if text == before:
            break
    return text
