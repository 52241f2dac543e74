"""Recognisers for structured personal data: a cheap gate, a pattern, then a validator.

Every recogniser first runs a gate (a substring test or a small stdlib regex, a few
microseconds on 300 characters) and works only on what passes it: most rows hold no PII.

From presidio-analyzer (its regexes and validators, without an NLP engine), each run only
on the window around a gate match: ``EmailRecognizer`` (the domain checked against
tldextract's *bundled* public-suffix list, never downloaded); ``CreditCardRecognizer``
(Luhn) with our patterns (Mastercard 2221-2720 too; compact, 4-4-4-4, Amex/Diners 4-6-5 and
4-6-4; not after ``EAN``/``IMEI``...); ``IbanRecognizer`` (mod-97 and per-country format);
``IpRecognizer`` (:mod:`ipaddress`; not its bare ``::``, and not an IPv4 that reads as a
version, see :func:`not_a_version`); ``UsSsnRecognizer`` (``123-45-6789``; area 9xx
rejected too) and ``UkNinoRecognizer`` (``AB 12 34 56 C``).

Ours: phones (:class:`Phones`: libphonenumber on digit windows; presidio's
``PhoneRecognizer`` scans the whole text once per region, 5-9 ms per row with digits);
URLs (:class:`Urls`: bare domains without presidio's false hits such as ``john.do`` in an
e-mail or ``index.ht`` in ``index.html``); national IDs (:class:`NationalIds`): the French
NIR (mod-97 key) anywhere, and, only with a keyword within 60 characters before or 30
after, the Dutch BSN (11-proof), the German Steuer-ID (ISO 7064 MOD 11,10) and a 9-digit
US SSN, since about one random 9- or 11-digit number in 11 passes those checks.

Each recogniser gives its spans one score, used to settle overlaps: 1.0 when a checksum
verified the value, less for weaker evidence.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunelab.data.pii_checksums import (
    bsn_ok,
    insee_key,
    insee_ok,
    ssn_ok,
    steuer_id_check_digit,
    steuer_id_ok,
)

__all__ = [
    "PII_TYPES",
    "STRUCTURED_TYPES",
    "PiiSpan",
    "Recognizer",
    "bsn_ok",
    "build_recognizers",
    "insee_key",
    "national_id_kind",
    "ssn_ok",
    "steuer_id_check_digit",
]

PII_TYPES: tuple[str, ...] = (
    "email", "phone", "credit_card", "iban", "ip", "url", "national_id", "person",
)  # fmt: skip
STRUCTURED_TYPES: tuple[str, ...] = tuple(t for t in PII_TYPES if t != "person")
PHONE_REGIONS: tuple[str, ...] = ("GB", "DE", "FR", "NL")  # national formats with a 0 prefix
# a bare domain (no scheme, no www.) ends in a country code or one of these; long-tail
# gTLDs are code attributes far more often than domains: ``self.data``, ``app.run``
BARE_GTLDS = frozenset({"com", "org", "net", "edu", "gov", "mil", "int", "info", "biz"})
# country codes that are also file extensions or attributes: ``main.py``, ``users.id``
CODE_SUFFIXES = frozenset(
    {"py", "md", "sh", "rs", "pt", "ps", "cc", "ml", "so", "mk", "ac", "am", "id", "is", "to"}
)


@dataclass(frozen=True)
class PiiSpan:
    """``text[start:end]`` is personal data of ``type`` (one of :data:`PII_TYPES`).

    ``score`` in (0, 1] is the recogniser's confidence (1.0 = a checksum verified it).
    """

    type: str
    start: int
    end: int
    score: float


class Recognizer(Protocol):
    """Finds the values of one PII type in a text (spans may overlap each other)."""

    @property
    def type(self) -> str: ...

    def find(self, text: str) -> list[PiiSpan]: ...


# --- our own recognisers -------------------------------------------------------------


def _compact(value: str) -> str:
    return re.sub(r"[\s.\-]", "", value)


@dataclass(frozen=True)
class IdKind:
    """One national-ID format: its pattern, validator and (when weak) required keywords."""

    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool]  # gets the value without separators
    score: float
    context: re.Pattern[str] | None = None


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)


# a bare number must not continue another token: ``+1-216-516-279949608``, ``1.234567890``
_NOT_AFTER, _NOT_BEFORE = r"(?<![\w+.,\-/])", r"(?![\w\-/]|[.,]\d)"
ID_KINDS: tuple[IdKind, ...] = (
    IdKind("fr_insee", re.compile(
        r"(?<![\w+])[12] ?\d\d ?\d\d ?(?:\d\d|2[AB]) ?\d{3} ?\d{3} ?\d\d(?!\w)"
    ), insee_ok, 1.0),
    IdKind("nl_bsn", re.compile(rf"{_NOT_AFTER}\d{{4}}([. ]?)\d\d\1\d{{3}}{_NOT_BEFORE}"), bsn_ok,
           1.0, _words("bsn", "burgerservicenummer", "sofi-?nummer", "sofi",
                       r"citizen\s+service\s+number")),
    IdKind("de_steuer_id", re.compile(
        rf"{_NOT_AFTER}[1-9]\d( ?)\d{{3}}\1\d{{3}}\1\d{{3}}{_NOT_BEFORE}"
    ), steuer_id_ok, 1.0, _words(r"steuer-?id(?:nr)?", "idnr", "identifikationsnummer",
                                 r"steuerliche[\s-]*identifikationsnummer", r"tax\s+id", "tin")),
    IdKind("us_ssn_compact", re.compile(rf"{_NOT_AFTER}\d{{9}}{_NOT_BEFORE}"), ssn_ok, 0.8,
           _words("ssn", "ssns", r"social\s+security(?:\s+(?:number|no))?")),
)  # fmt: skip


def _has_context(kind: IdKind, text: str, start: int, end: int) -> bool:
    if kind.context is None:
        return True
    return kind.context.search(text, max(0, start - 60), min(len(text), end + 30)) is not None


class NationalIds:
    """Our national-ID formats (see :data:`ID_KINDS`)."""

    type = "national_id"
    _gate = re.compile(r"\d(?:[ .]?[\dAB]){8}")  # 9+ digits, maybe spaced

    def find(self, text: str) -> list[PiiSpan]:
        if self._gate.search(text) is None:
            return []
        spans = []
        for kind in ID_KINDS:
            for m in kind.pattern.finditer(text):
                if kind.valid(_compact(m.group())) and _has_context(kind, text, *m.span()):
                    spans.append(PiiSpan(self.type, m.start(), m.end(), kind.score))
        return spans


_NINO = re.compile(r"(?i)\b[a-z]{2} ?\d\d ?\d\d ?\d\d ?[a-d]\b")
_SSN_SEP = re.compile(r"\d{3}([- .])\d\d\1\d{4}")


def national_id_kind(value: str) -> str | None:
    """The kind of a national ID value (``us_ssn``, ``uk_nino``, ``fr_insee``, ...), if any.

    A 9-digit value that passes the 11-proof reads as a BSN, any other as an SSN.
    """
    if _SSN_SEP.fullmatch(value):
        return "us_ssn"
    if _NINO.fullmatch(value):
        return "uk_nino"
    for kind in ID_KINDS:
        if kind.pattern.fullmatch(value) and kind.valid(_compact(value)):
            return kind.name
    return None


# a number right after one of these is a code, not a phone: ``ISBN 978-3-16-148410-0``
_PHONE_CODE_WORDS = re.compile(
    r"\b(?:ean|gtin|isbn|upc|imei|sku|serial|sn|order|invoice|inv|tracking|ticket|transaction"
    r"|customer|ref|reference|case|booking)\b(?:\s*(?:no|nr|number|id)\b)?[\s.:#-]*$|#$",
    re.IGNORECASE,
)


def _cuts(value: str, nsn: str) -> frozenset[int] | None:
    """Where ``value``'s digit groups break, as offsets into the national number ``nsn``.

    Cuts inside a country code or trunk prefix are dropped: ``+44 (0)20 7946 0958`` and
    ``020 7946 0958`` both cut ``2079460958`` at {2, 6}.
    """
    groups = re.findall(r"\d+", value)
    digits = "".join(groups)
    if not digits.endswith(nsn):
        return None
    offset, pos, cuts = len(digits) - len(nsn), 0, set()
    for group in groups[:-1]:
        pos += len(group)
        if pos > offset:
            cuts.add(pos - offset)
    return frozenset(cuts)


class Phones:
    """Phone numbers: valid per libphonenumber, and grouped as a phone number is grouped.

    A window is a run of >= 8 digits joined by at most 3 of `` .-/()``, not continuing a
    code (``SN1234567890``, ``A-06176-04``) nor labelled as one (``order``, ``ISBN``...);
    dates in it are blanked out (``04.10.2026 19:08``). libphonenumber's matcher finds the
    valid numbers in the window: with a ``+`` or ``00`` prefix for every country, in
    national format for the US (and Canada) and :data:`PHONE_REGIONS`. An international
    number is kept as it is written; a national one when its digit groups merge the groups
    of libphonenumber's national format
    (``02079460958``) or split them, the area-code cut aside (``+31 6 1234 5678``,
    ``0207 946 0958``); groups that cross them (``2024-001873`` for ``(202) 400-1873``)
    are not a phone.
    """

    type = "phone"
    score = 0.7
    _window = re.compile(r"\d(?:[ .\-/()]{0,3}\d){7,}\)?")
    _date = re.compile(
        r"(?<![\d.\-/])(?:\d{4}([-./])\d\d?\1\d\d?|\d\d?([-./])\d\d?\2(?:\d\d){1,2})(?![-./]?\d)"
    )

    @staticmethod
    def regions(candidate: str) -> tuple[str, ...]:
        """Regions whose numbers could read as ``candidate`` (by prefix and digit count).

        ``+``/``00``: one international parse. A leading 0 is a trunk prefix: FR and NL
        numbers have 10 digits, GB 10-11, DE 6-13. Otherwise a NANP number: 10 digits,
        or 11 starting with 1.
        """
        if candidate.startswith(("+", "00")):
            return ("GB",)  # any region whose international prefix is 00
        digits = re.sub(r"\D", "", candidate)
        if digits[0] == "0":
            by_length = {10: ("FR", "NL", "GB", "DE"), 11: ("GB", "DE")}
            return tuple(r for r in by_length.get(len(digits), ("DE",)) if r in PHONE_REGIONS)
        return ("US",) if len(digits) == 10 or (len(digits) == 11 and digits[0] == "1") else ()

    def grouped_as_phone(self, value: str, number: Any) -> bool:
        """``value``'s cuts are a subset of the national format's, or a superset of all but
        its first (the area code, which people move: ``0207 946 0958``)."""
        import phonenumbers as pn

        nsn = pn.national_significant_number(number)
        cuts = _cuts(value, nsn)
        ref = _cuts(pn.format_number(number, pn.PhoneNumberFormat.NATIONAL), nsn)
        if cuts is None or ref is None:
            return False
        return cuts <= ref or cuts >= ref - {min(ref, default=0)}

    def _candidates(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, window)``: digit runs that may hold a number; ``window`` is
        ``text[start - 3 : end + 3]`` with dates blanked."""
        out = []
        for m in self._window.finditer(text):
            start = m.start() - (text[m.start() - 1 : m.start()] in ("+", "("))
            before = text[max(0, start - 2) : start]
            if before[-1:].isalnum() or re.fullmatch(r"\w[-./]", before):
                continue  # inside a code: ``SN1234567890``, ``ORD-2024-001873``
            if _PHONE_CODE_WORDS.search(text, max(0, start - 24), start):
                continue
            lo, hi = max(0, start - 3), min(len(text), m.end() + 3)
            window = self._date.sub(lambda d: "x" * len(d.group()), text[lo:hi])
            if sum(c.isdigit() for c in window[start - lo : m.end() - lo]) >= 8:
                out.append((start, m.end(), window))
        return out

    def find(self, text: str) -> list[PiiSpan]:
        from phonenumbers import PhoneNumberMatcher

        found: set[tuple[int, int]] = set()
        for start, end, window in self._candidates(text):
            lo = max(0, start - 3)
            for region in self.regions(window[start - lo : end - lo]):
                hits = [
                    (lo + h.start, lo + h.end)
                    for h in PhoneNumberMatcher(window, region)  # leniency VALID
                    if lo + h.end > start and lo + h.start < end
                    and (h.raw_string.startswith(("+", "00"))  # any country's own grouping
                         or self.grouped_as_phone(h.raw_string, h.number))
                ]  # fmt: skip
                if hits:
                    found.update(hits)
                    break
        return [PiiSpan(self.type, s, e, self.score) for s, e in sorted(found)]


@functools.cache
def tld_extractor() -> Any:
    """A tldextract extractor on the bundled public-suffix snapshot: no download, no cache."""
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


@functools.cache
def _bare_tlds() -> frozenset[str]:
    """Top-level labels a bare domain may end in: :data:`BARE_GTLDS` and country codes of
    the bundled public-suffix list, less :data:`CODE_SUFFIXES`."""
    labels = {s.rsplit(".", 1)[-1] for s in tld_extractor().tlds}
    return frozenset(t for t in labels if len(t) == 2 and t.isascii()) - CODE_SUFFIXES | BARE_GTLDS


_TRAILING = ".,;:!?'\"]}>"


def _trim_url(text: str, start: int, end: int) -> int:
    """End of a URL without trailing sentence punctuation (a ')' only when unbalanced)."""
    while end > start:
        c = text[end - 1]
        if c in _TRAILING or (
            c == ")" and text.count("(", start, end) < text.count(")", start, end)
        ):
            end -= 1
        else:
            break
    return end


class Urls:
    """URLs with a scheme (0.9), starting with ``www.`` (0.8) or bare domains (0.6).

    A bare domain must end in a public suffix whose top label is in :func:`_bare_tlds`
    (lower case), have a name before it, and not be part of an e-mail address.
    """

    type = "url"
    _scheme = re.compile(r"\b(?:https?|ftps?)://[^\s<>\"'`]+", re.IGNORECASE)
    _www = re.compile(r"(?<![\w@./-])www\d{0,3}\.[^\s<>\"'`]+", re.IGNORECASE)
    _bare = re.compile(
        r"(?<![\w@./:\-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,24}))"
        r"(?![\w@-])(?::\d{2,5})?(?:[/?#][^\s<>\"'`]*)?",
        re.IGNORECASE,
    )
    _gate = re.compile(r"://|www\.|WWW\.|[a-z0-9]\.[a-z]{2}")

    def find(self, text: str) -> list[PiiSpan]:
        if self._gate.search(text) is None:
            return []
        spans = []
        for pattern, score in ((self._scheme, 0.9), (self._www, 0.8)):
            for m in pattern.finditer(text):
                end = _trim_url(text, m.start(), m.end())
                if "." in text[m.start() : end]:
                    spans.append(PiiSpan(self.type, m.start(), end, score))
        for m in self._bare.finditer(text):
            host, suffix = m.group(1), m.group(2)
            if suffix not in _bare_tlds() or text[m.end() : m.end() + 1] in ("(", "["):
                continue  # not ``df.at[0]``, ``x.co(...)``; upper case (``Foo.COM``) neither
            parts = tld_extractor()(host)
            if parts.suffix and parts.domain:
                spans.append(PiiSpan(self.type, m.start(), _trim_url(text, *m.span()), 0.6))
        return spans


# --- presidio's recognisers ----------------------------------------------------------


def _always(text: str, start: int, end: int) -> bool:
    return True


_VERSION_WORDS = frozenset({
    "v", "ver", "version", "release", "build", "firmware", "rev", "patch", "sdk", "update",
    "updated", "upgrade", "upgraded", "install", "installed", "downgrade", "downgraded",
})  # fmt: skip
_WORD_BEFORE = re.compile(r"([A-Za-z]+)\.?(?:\s+(?:to|the|from|of))*\s*$")
_WORD_AFTER = re.compile(r"\s+([A-Za-z]+)")
_PRODUCT_WORDS = re.compile(r"\b(?:ean|gtin|isbn|upc|barcode|imei)\b[\s:#-]*$", re.IGNORECASE)


def not_a_version(text: str, start: int, end: int) -> bool:
    """False for an IPv4 that reads as a version number.

    That is: part of a longer dotted number (``1.2.3.4.5``), or next to a version word
    (``v``, ``version``, ``firmware``, ``update``, ``upgraded to``, ...) before or after it:
    ``version 1.2.3.4``, ``the 6.0.5.42 update``. ``8.8.8.8`` alone stays an IP.
    """
    if re.search(r"\d\.$", text[max(0, start - 2) : start]) or re.match(r"\.\d", text[end:]):
        return False
    before = _WORD_BEFORE.search(text, max(0, start - 40), start)
    after = _WORD_AFTER.match(text, end, end + 20)
    return not {m.group(1).lower() for m in (before, after) if m} & _VERSION_WORDS


def not_a_product_code(text: str, start: int, end: int) -> bool:
    """False for a number labelled as a product code (``EAN 4006381333931``, ``IMEI ...``)."""
    return _PRODUCT_WORDS.search(text, max(0, start - 16), start) is None


def _ssn_area_ok(text: str, start: int, end: int) -> bool:
    return text[start] != "9"


@dataclass(frozen=True)
class PresidioRecognizer:
    """A presidio recogniser run only around the matches of ``gate``.

    Presidio's regexes scan a whole text at 50-400 us per 300 characters; here each gate
    match is widened over the characters a value can hold (``spread``), and presidio sees
    that window plus ``margin`` characters either side (for its boundary checks), nothing on
    rows without a match. ``keep`` drops spans presidio accepts wrongly.
    """

    type: str
    engine: Any  # a presidio EntityRecognizer
    gate: re.Pattern[str]
    spread: Callable[[str], bool]
    score: float
    keep: Callable[[str, int, int], bool] = field(default=_always)
    margin: int = 2

    def find(self, text: str) -> list[PiiSpan]:
        found: set[tuple[int, int]] = set()
        pos = 0
        while (m := self.gate.search(text, pos)) is not None:
            lo, hi = m.start(), m.end()
            while lo > 0 and self.spread(text[lo - 1]):
                lo -= 1
            while hi < len(text) and self.spread(text[hi]):
                hi += 1
            pos, lo, hi = hi, max(0, lo - self.margin), min(len(text), hi + self.margin)
            for r in self.engine.analyze(text[lo:hi], self.engine.supported_entities, None):
                if self.keep(text, lo + r.start, lo + r.end):
                    found.add((lo + r.start, lo + r.end))
        return [PiiSpan(self.type, s, e, self.score) for s, e in sorted(found)]


def _chars(chars: str) -> Callable[[str], bool]:
    allowed = frozenset(chars)
    return allowed.__contains__


def _email_char(c: str) -> bool:
    return c.isalnum() or c in "._%+-'!#$&*/=?^`{|}~"


_CARD = r"(?<![\w+]){}(?!\w)"
_CARD_PATTERNS = (  # (name, regex): brand prefixes, then lengths and groupings
    ("card compact", _CARD.format(
        r"(?:4\d{12}(?:\d{3}){0,2}|(?:5[1-5]\d\d|2(?:2[2-9]\d|[3-6]\d\d|7[01]\d|720))\d{12}"
        r"|3[47]\d{13}|3(?:0[0-5]|[689]\d)\d{11}|6(?:011|5\d\d|4[4-9]\d)\d{12}|35\d{14})"
    )),
    ("card 4-4-4-4", _CARD.format(
        r"(?:4\d{3}|5[1-5]\d\d|2[2-7]\d\d|6\d{3}|35\d\d)([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
    )),
    ("card 4-6-5", _CARD.format(r"3\d{3}([ -])\d{6}\1\d{4,5}")),
)  # fmt: skip


def _presidio_recognizers(types: Sequence[str]) -> list[Recognizer]:
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        UkNinoRecognizer,
        UsSsnRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return bool(tld_extractor()(pattern_text).fqdn)

    ip_patterns = [p for p in IpRecognizer.PATTERNS if p.name != "IPv6_unspecified"]
    ssn_patterns = [p for p in UsSsnRecognizer.PATTERNS if p.name == "SSN5 (medium)"]
    card_patterns = [Pattern(name, regex, 0.3) for name, regex in _CARD_PATTERNS]
    digits, hexdigits, upper = string.digits, string.hexdigits, string.ascii_uppercase
    table: dict[str, list[Recognizer]] = {
        "email": [PresidioRecognizer(
            "email", OfflineEmailRecognizer(), re.compile("@"), _email_char, 0.95,
        )],
        "credit_card": [PresidioRecognizer(
            "credit_card", CreditCardRecognizer(patterns=card_patterns),
            re.compile(r"\d{4}[ -]?\d{4,6}[ -]?\d{4}"), _chars(digits + " -"), 1.0,
            not_a_product_code,
        )],
        "iban": [PresidioRecognizer(
            "iban", IbanRecognizer(), re.compile(r"[A-Z]{2}\d\d ?[A-Z0-9]{4}"),
            _chars(digits + upper + " -"), 1.0,
        )],
        "ip": [  # one gate for IPv4, one for IPv6 (an alternation is 3x slower)
            PresidioRecognizer("ip", ip, gate, _chars(hexdigits + ":.%/"), 0.9, not_a_version)
            for ip in [IpRecognizer(patterns=ip_patterns)]
            for gate in (re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d"),
                         re.compile(r"[0-9A-Fa-f:]:[0-9A-Fa-f]{0,4}:"))
        ],
        "national_id": [
            PresidioRecognizer("national_id", UsSsnRecognizer(patterns=ssn_patterns),
                               _SSN_SEP, _chars(digits + "-. "), 0.8, _ssn_area_ok),
            PresidioRecognizer("national_id", UkNinoRecognizer(),
                               re.compile(r"\d\d ?\d\d ?\d\d ?[A-Da-d]\b"), _chars(""), 0.8,
                               margin=5),
        ],
    }  # fmt: skip
    return [r for t in types for r in table.get(t, [])]


def build_recognizers(types: Sequence[str]) -> list[Recognizer]:
    """The recognisers for ``types`` (structured ones; ``person`` is handled elsewhere).

    Imports presidio-analyzer, which takes seconds (it imports transformers and torch).
    """
    ours: dict[str, list[Recognizer]] = {
        "phone": [Phones()], "url": [Urls()], "national_id": [NationalIds()],
    }  # fmt: skip
    recognizers = _presidio_recognizers(types)
    recognizers += [r for t in types for r in ours.get(t, [])]
    if "url" in types or "email" in types:
        tld_extractor()("example.com")  # load the snapshot now, not on the first row
    return recognizers
