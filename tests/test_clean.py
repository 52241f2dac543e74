"""Text cleaners: each one on hand-made cases, the registry, and idempotence as a property."""

from __future__ import annotations

import unicodedata

import ftfy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.data.clean import (
    _FTFY_CONFIG,
    CLEANERS,
    DEFAULT_CLEANERS,
    check_cleaners,
    clean_text,
    fix_unicode,
    normalize_whitespace,
    strip_html,
)
from tunelab.errors import ConfigError

# --- unicode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fixed"),
    [
        ("cafÃ©", "café"),  # UTF-8 read as Latin-1
        ("itâ€™s", "it’s"),  # UTF-8 read as Windows-1252; the curly quote stays curly
        ("cafe\u0301", "café"),  # NFC composes e + combining acute
        ("ﬁnal", "final"),  # ligature
        ("ambition\x85 whole", "ambition… whole"),  # C1 control for cp1252's ellipsis
        ("a\x00b\x1b[31mred\x1b[0m", "abred"),  # NUL and terminal colours
        ("line\r\nnext", "line\nnext"),
    ],
)
def test_unicode_repairs(raw: str, fixed: str) -> None:
    assert fix_unicode(raw) == fixed


@pytest.mark.parametrize(
    "text",
    [
        "plain ASCII, untouched",
        "“Curly” quotes – and dashes — stay…",
        "Ｆｕｌｌ-width and ＣＪＫ　text",  # typography, not damage
        "&amp; stays for the html cleaner",
        "naïve Straße 日本語 😀",
    ],
)
def test_unicode_leaves_good_text_alone(text: str) -> None:
    assert fix_unicode(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("ab \n\t.\x00\r\x1b\u2018\u2019\u201c\u201d\u2013\u2014\u2026")))
def test_unicode_fast_path_agrees_with_ftfy(text: str) -> None:
    # the fast path (ASCII, or ASCII plus typography) must return what ftfy would
    assert fix_unicode(text) == unicodedata.normalize("NFC", ftfy.fix_text(text, _FTFY_CONFIG))


# --- whitespace ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\x00b\x07c\x7fd\x9be", "abcde"),  # C0/C1 controls removed
        ("\ufeffBOM", "BOM"),
        ("one\r\ntwo\rthree\u2028four\x0cfive", "one\ntwo\nthree\nfour\nfive"),
        ("a\u00a0b\u2009c\u3000d\u202fe", "a b c d e"),  # no-break, thin, ideographic...
        ("a  b\t\tc \t d\te", "a b c d e"),  # runs inside a line
        ("end   \nnext\t\n", "end\nnext"),  # trailing spaces per line
        ("a\n\n\nb\n\n\n\n\nc\n\nd", "a\n\nb\n\nc\n\nd"),  # 2+ blank lines -> one
        ("a\n  \n \t \nb", "a\n\nb"),  # lines of spaces are blank lines
        ("\n\n  hello  \n\n", "hello"),  # stripped
        ("tab\there", "tab here"),
    ],
)
def test_whitespace_cases(raw: str, clean: str) -> None:
    assert normalize_whitespace(raw) == clean


def test_whitespace_keeps_code_indentation() -> None:
    code = "def f(x):\n    if x:\n\treturn  x   \n    return 0\n"
    assert normalize_whitespace(code) == "def f(x):\n    if x:\n\treturn x\n    return 0"
    # an indented block loses only the indentation every line shares
    assert normalize_whitespace("    a = 1\n      b = 2\n") == "a = 1\n  b = 2"


def test_whitespace_leaves_clean_text_alone() -> None:
    text = "Title\n\nA line with single spaces.\n  - an indented item"
    assert normalize_whitespace(text) == text


# --- html ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("<p>Hello <b>world</b></p>", "\nHello world\n"),
        ("one<br>two<br/>three", "one\ntwo\nthree"),
        ("<ul><li>a</li><li>b</li></ul>", "\n\na\nb\n"),
        ("<p>a</p><p>b</p>", "\na\n\nb\n"),
        (
            "Tom &amp; Jerry &lt;3 &eacute;t&eacute; &#8212; &#x27;ok&#x27;",
            "Tom & Jerry <3 été — 'ok'",
        ),
        ("x<script>var a = '<p>';</script>y<style>p {color: red}</style>z", "xyz"),
        ("<!DOCTYPE html><!-- note -->text", "text"),
        ("&lt;b&gt;bold&lt;/b&gt;", "bold"),  # escaped markup is markup once unescaped
        ("<table><tr><td>a</td><td>b</td></tr></table>", "\n\na b \n"),
    ],
)
def test_html_cases(raw: str, text: str) -> None:
    assert strip_html(raw) == text


@pytest.mark.parametrize(
    "text",
    [
        "a < b and c > d",
        "if x<3 or y >= 2: pass",
        "List<String> names = new ArrayList<>();",
        "the <unk> token",
        "no markup at all",
        "AT&T and R&D",
    ],
)
def test_html_leaves_non_html_alone(text: str) -> None:
    assert strip_html(text) == text


def test_html_then_whitespace_reads_well() -> None:
    raw = "<div><h1>Title</h1><p>First&nbsp;para.</p><ul><li>one</li><li>two</li></ul></div>"
    assert clean_text(raw, ["html", "whitespace"]) == "Title\n\nFirst para.\n\none\ntwo"


# --- registry and clean_text ---------------------------------------------------------------


def test_registry() -> None:
    assert set(DEFAULT_CLEANERS) <= set(CLEANERS) == {"unicode", "whitespace", "html"}
    check_cleaners(list(CLEANERS))
    check_cleaners([])


def test_unknown_cleaner_names_the_key_and_guesses() -> None:
    with pytest.raises(ConfigError) as err:
        check_cleaners(["unicode", "whitespaces", "zzz"])
    assert err.value.problems[0][0] == "data.clean.steps.1"
    assert "did you mean 'whitespace'?" in err.value.problems[0][1]
    assert err.value.problems[1][0] == "data.clean.steps.2"
    assert "did you mean" not in err.value.problems[1][1]


def test_clean_text_applies_steps_in_order() -> None:
    raw = "<p>cafÃ©\u00a0\u00a0au   lait</p>\r\n\r\n\r\n\r\nok"
    assert clean_text(raw, DEFAULT_CLEANERS) == "<p>café au lait</p>\n\nok"
    assert clean_text(raw, ["html", "unicode", "whitespace"]) == "café au lait\n\nok"
    assert clean_text(raw, []) == raw


# --- idempotence ---------------------------------------------------------------------------

# Characters that make cleaners interact: mojibake pieces, entities, tags, odd spaces.
_PIECES = [
    *" \t\n\r\x0b\x00\x1f\x85\xa0\u2028\u3000\ufeffaÃÂ©€™é\u0301<>&;/",
    *("&amp;", "&lt;", "&#13;", "&nbsp;", "<p>", "</p>", "<br>", "<script>", "Ã©", "â€™"),
]
_TEXTS = st.one_of(st.lists(st.sampled_from(_PIECES), max_size=25).map("".join), st.text())


@pytest.mark.parametrize("name", sorted(CLEANERS))
@settings(max_examples=150, deadline=None)
@given(text=_TEXTS)
def test_each_cleaner_is_idempotent(name: str, text: str) -> None:
    once = CLEANERS[name](text)
    assert CLEANERS[name](once) == once


@settings(max_examples=300, deadline=None)
@given(text=_TEXTS, steps=st.lists(st.sampled_from(sorted(CLEANERS)), max_size=4))
def test_clean_text_is_idempotent(text: str, steps: list[str]) -> None:
    once = clean_text(text, steps)
    assert clean_text(once, steps) == once
