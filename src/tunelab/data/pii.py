"""Personal-data detection and anonymisation for the data-prep stage.

:class:`PiiDetector` finds structured personal data (e-mails, phones, card numbers, IBANs,
IP addresses, URLs, national IDs; see :mod:`tunelab.data.pii_recognizers` for how each is
recognised) and, given a spaCy pipeline with an NER component, person names.
:class:`Anonymizer` replaces what the detector finds, under one of three policies:

- ``redact``: a type tag, ``[EMAIL]``, ``[PHONE]``, ``[CREDIT_CARD]``, ``[IBAN]``, ``[IP]``,
  ``[URL]``, ``[NATIONAL_ID]``, ``[PERSON]``;
- ``mask``: every letter and digit becomes ``*``, separators stay (``+44 20 7946 0958`` ->
  ``+** ** **** ****``); card numbers keep their last 4 digits, as on a receipt;
- ``pseudonymise``: a realistic fake of the same type and shape. The fake is a function of
  ``(seed, type, original)`` through BLAKE2b, so the same value gets the same fake in every
  row, process and run with that seed, and a conversation stays coherent. A fake is
  re-checked with the detector and must not read as another type.

Both are pure value transformations: build the detector once per process (it imports
presidio-analyzer, which takes seconds) and call the anonymiser on every text field.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from tunelab.data.pii_recognizers import (
    PII_TYPES,
    STRUCTURED_TYPES,
    PiiSpan,
    Recognizer,
    bsn_ok,
    build_recognizers,
    insee_key,
    national_id_kind,
    ssn_ok,
    steuer_id_check_digit,
)
from tunelab.errors import ConfigError

__all__ = [
    "PII_TYPES",
    "POLICIES",
    "STRUCTURED_TYPES",
    "Anonymizer",
    "PiiDetector",
    "PiiSpan",
    "Policy",
    "resolve_overlaps",
]

Policy = Literal["redact", "mask", "pseudonymise"]
POLICIES: tuple[Policy, ...] = ("redact", "mask", "pseudonymise")
NAME_LABELS = frozenset({"PERSON", "PER"})
# breaks ties between equal scores and lengths: the more specific type wins
_PRIORITY = {t: i for i, t in enumerate(
    ("email", "iban", "credit_card", "national_id", "ip", "url", "phone", "person")
)}  # fmt: skip


def resolve_overlaps(spans: Sequence[PiiSpan]) -> list[PiiSpan]:
    """Non-overlapping spans sorted by start.

    A span inside a longer one is dropped (the longer one covers it: the ``john.do`` or
    ``example.com`` inside an e-mail, an e-mail inside a URL, an IP inside a URL). Of
    spans that overlap partly, the higher score wins, then the longer, then the type
    first in ``email, iban, credit_card, national_id, ip, url, phone, person``.
    """
    outer = [
        s for s in spans
        if not any(
            o.start <= s.start and s.end <= o.end and o.end - o.start > s.end - s.start
            for o in spans
        )
    ]  # fmt: skip
    outer.sort(key=lambda s: (-s.score, s.start - s.end, _PRIORITY[s.type], s.start))
    kept: list[PiiSpan] = []
    for s in outer:
        if all(s.end <= k.start or k.end <= s.start for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


def _resolve_types(types: Sequence[str] | None, has_names: bool) -> tuple[str, ...]:
    if types is None:
        return STRUCTURED_TYPES + (("person",) if has_names else ())
    problems = []
    for t in types:
        if t not in PII_TYPES:
            close = difflib.get_close_matches(t, PII_TYPES, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(PII_TYPES)}"
            problems.append(("data.anonymize.types", f"unknown type {t!r}; {hint}"))
    if "person" in types and not has_names:
        problems.append((
            "data.anonymize.name_model",
            "type 'person' needs a spaCy pipeline with an NER component; set this or drop "
            "'person' from data.anonymize.types",
        ))  # fmt: skip
    if problems:
        raise ConfigError("invalid PII settings", problems=problems)
    return tuple(dict.fromkeys(types))


class _Names:
    """Person names from a spaCy pipeline's NER component (labels PERSON or PER)."""

    type = "person"

    def __init__(self, nlp: Any) -> None:
        self._nlp = nlp

    def find(self, text: str) -> list[PiiSpan]:
        doc = self._nlp(text)
        return [
            PiiSpan("person", e.start_char, e.end_char, 0.5)
            for e in doc.ents
            if e.label_ in NAME_LABELS
        ]


def _load_name_model(path: str | Path) -> _Names:
    key = "data.anonymize.name_model"
    hint = "give the folder of a spaCy pipeline with an 'ner' component, e.g. en_core_web_sm"
    if not Path(path).is_dir():
        raise ConfigError("name model not found", problems=[(key, f"{path}: no such folder")],
                          hint=hint)  # fmt: skip
    import spacy

    try:
        nlp = spacy.load(Path(path))
    except (OSError, ValueError) as e:
        problem = (key, f"{path}: not a spaCy pipeline ({e})")
        raise ConfigError("name model cannot be loaded", problems=[problem], hint=hint) from e
    if "ner" not in nlp.pipe_names:
        pipes = ", ".join(nlp.pipe_names) or "none"
        problem = (key, f"{path}: no 'ner' component (pipes: {pipes})")
        raise ConfigError("name model has no NER", problems=[problem], hint=hint)
    labels = set(getattr(nlp.get_pipe("ner"), "labels", ()))
    if not labels & NAME_LABELS:
        raise ConfigError("name model finds no person names", hint=hint, problems=[
            (key, f"{path}: its NER labels {sorted(labels)} have no PERSON or PER")])  # fmt: skip
    return _Names(nlp)


class PiiDetector:
    """Finds personal data in a text; build once per process, call :meth:`find` per text.

    ``types`` (``data.anonymize.types``): a subset of :data:`PII_TYPES`; ``None`` means
    every structured type, plus ``person`` when a name model is given. ``name_model``
    (``data.anonymize.name_model``): folder of a spaCy pipeline whose NER component labels
    PERSON or PER; without one, names are not detected. Both raise :class:`ConfigError`.
    """

    def __init__(
        self, types: Sequence[str] | None = None, name_model: str | Path | None = None
    ) -> None:
        names = _load_name_model(name_model) if name_model is not None else None
        self.types = _resolve_types(types, names is not None)
        self._recognizers: list[Recognizer] = build_recognizers(
            [t for t in self.types if t != "person"]
        )
        self.names_available = names is not None and "person" in self.types
        if self.names_available and names is not None:
            self._recognizers.append(names)
            note = f"detected with the spaCy NER model at {name_model}"
        elif names is not None:
            note = "not detected ('person' is not in data.anonymize.types)"
        else:
            note = ("not detected (no name model; set data.anonymize.name_model to a spaCy "
                    "pipeline with NER)")  # fmt: skip
        structured = ", ".join(t for t in self.types if t != "person") or "none"
        self.note = f"PII types: {structured}; person names: {note}"

    def find(self, text: str) -> list[PiiSpan]:
        """Spans of personal data, sorted by start and not overlapping."""
        return resolve_overlaps([s for r in self._recognizers for s in r.find(text)])


# --- fakes for ``pseudonymise`` ------------------------------------------------------


def _reshape(template: str, chars: str) -> str:
    """``chars`` laid out on the letters/digits of ``template``, its separators kept."""
    it = iter(chars)
    return "".join(next(it) if c.isalnum() else c for c in template)


def _redigit(value: str, rng: random.Random, keep: int) -> str:
    """``value`` with every digit after the first ``keep`` digits drawn at random."""
    out, seen = [], 0
    for c in value:
        if c.isdigit():
            seen += 1
            c = c if seen <= keep else str(rng.randrange(10))
        out.append(c)
    return "".join(out)


def _luhn_complete(payload: str) -> str:
    """``payload`` plus the Luhn check digit that makes it valid."""
    total = 0
    for i, d in enumerate(reversed(payload)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return payload + str(-total % 10)


def _fake_phone(value: str, rng: random.Random, fake: Any) -> str:
    # the last 6 digits are drawn; the country and area code stay, so the number stays valid
    return _redigit(value, rng, max(3, sum(c.isdigit() for c in value) - 6))


def _fake_card(value: str, rng: random.Random, fake: Any) -> str:
    digits = re.sub(r"\D", "", value)  # keep the issuer prefix (brand, bank), not the account
    payload = digits[:4] + "".join(str(rng.randrange(10)) for _ in digits[4:-1])
    return _reshape(value, _luhn_complete(payload))


def _fake_iban(value: str, rng: random.Random, fake: Any) -> str:
    compact = re.sub(r"[\s-]", "", value)
    bban = "".join(
        str(rng.randrange(10)) if c.isdigit() else rng.choice(string.ascii_uppercase)
        for c in compact[4:]
    )
    numeric = (bban + compact[:2].upper() + "00").translate(_IBAN_LETTERS)
    return _reshape(value, f"{compact[:2]}{98 - int(numeric) % 97:02d}{bban}")


_IBAN_LETTERS = {ord(c): str(i) for i, c in enumerate(string.digits + string.ascii_uppercase)}


def _fake_ip(value: str, rng: random.Random, fake: Any) -> str:
    prefix = value[value.index("/") :] if "/" in value else ""
    if ipaddress.ip_interface(value).version == 6:
        return str(fake.ipv6()) + prefix
    return str(fake.ipv4_public()) + prefix


def _fake_url(value: str, rng: random.Random, fake: Any) -> str:
    m = re.match(r"(?i)((?:https?|ftps?)://)?(www\d{0,3}\.)?[^/?#]*(.*)", value)
    scheme, www, rest = (m.group(1) or "", m.group(2) or "", m.group(3)) if m else ("", "", "")
    path = "/" + fake.uri_path() if rest.strip("/") else rest
    return f"{scheme}{www}{fake.domain_name()}{path}"


def _fake_email(value: str, rng: random.Random, fake: Any) -> str:
    return f"{fake.user_name()}@{rng.choice(('example.com', 'example.org', 'example.net'))}"


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _fake_national_id(value: str, rng: random.Random, fake: Any) -> str:
    kind = national_id_kind(value)
    if kind is None:  # not one of our formats: random characters of the same classes
        return "".join(
            str(rng.randrange(10)) if c.isdigit()
            else rng.choice(string.ascii_uppercase) if c.isalpha() else c
            for c in value
        )  # fmt: skip
    while True:  # each loop ends within a few draws (a valid value is found w.p. >= 1/11)
        if kind == "uk_nino":
            prefix = rng.choice("ABCEGHJKLMPRSTWXY") + rng.choice("ABCEGHJLMNPRSTWXY")
            new = prefix + _digits(rng, 6) + rng.choice("ABCD")
            if prefix in ("BG", "GB", "NK", "KN", "NT", "TN"):
                continue
        elif kind == "fr_insee":
            dept = rng.choice([d for d in range(1, 96) if d != 20])
            body = f"{rng.randint(1, 2)}{_digits(rng, 2)}{rng.randint(1, 12):02d}{dept:02d}"
            body += f"{rng.randint(1, 990):03d}{rng.randint(1, 999):03d}"
            new = f"{body}{insee_key(body):02d}"
        elif kind == "nl_bsn":
            new = _digits(rng, 9)
            if not bsn_ok(new):
                continue
        elif kind == "de_steuer_id":
            body = str(rng.randint(1, 9)) + _digits(rng, 9)
            new = body + str(steuer_id_check_digit(body))
            if max(Counter(body).values()) > 3 or len(set(body)) == 10:
                continue
        else:
            new = _digits(rng, 9)
            if not ssn_ok(new):
                continue
        return _reshape(value, new)


def _fake_person(value: str, rng: random.Random, fake: Any) -> str:
    return str(fake.name())


_FAKERS: dict[str, Callable[[str, random.Random, Any], str]] = {
    "email": _fake_email, "phone": _fake_phone, "credit_card": _fake_card, "iban": _fake_iban,
    "ip": _fake_ip, "url": _fake_url, "national_id": _fake_national_id, "person": _fake_person,
}  # fmt: skip
_ALNUM = re.compile(r"[^\W_]")
_CACHE_LIMIT = 100_000


class Anonymizer:
    """Replaces what ``detector`` finds; ``__call__`` returns the text and counts by type.

    ``policy`` (``data.anonymize.policy``): ``redact``, ``mask`` or ``pseudonymise`` (see
    the module docstring). ``seed`` picks the fakes of ``pseudonymise``; the same seed
    gives the same fakes in every process.
    """

    def __init__(self, detector: PiiDetector, policy: Policy = "redact", seed: int = 0) -> None:
        if policy not in POLICIES:
            close = difflib.get_close_matches(str(policy), POLICIES, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(POLICIES)}"
            raise ConfigError("invalid PII settings", problems=[
                ("data.anonymize.policy", f"unknown policy {policy!r}; {hint}")])  # fmt: skip
        self.detector, self.policy, self.seed = detector, policy, seed
        self._fakes: dict[tuple[str, str], str] = {}
        self._faker: Any = None

    def __call__(self, text: str) -> tuple[str, Counter[str]]:
        spans = self.detector.find(text)
        counts: Counter[str] = Counter(s.type for s in spans)
        if not spans:
            return text, counts
        parts, pos = [], 0
        for s in spans:
            parts += [text[pos : s.start], self.replacement(s.type, text[s.start : s.end])]
            pos = s.end
        parts.append(text[pos:])
        return "".join(parts), counts

    def replacement(self, type_: str, value: str) -> str:
        """What ``value``, detected as ``type_``, becomes under this policy."""
        if self.policy == "redact":
            return f"[{type_.upper()}]"
        if self.policy == "mask":
            masked = list(_ALNUM.sub("*", value))
            if type_ == "credit_card":
                for i in [i for i, c in enumerate(value) if c.isdigit()][-4:]:
                    masked[i] = value[i]
            return "".join(masked)
        key = (type_, value)
        if key not in self._fakes:
            if len(self._fakes) >= _CACHE_LIMIT:
                self._fakes.clear()
            self._fakes[key] = self._pseudonym(type_, value)
        return self._fakes[key]

    def _pseudonym(self, type_: str, value: str) -> str:
        """A fake from ``blake2b(seed, type, value)`` that reads as ``type_`` or as nothing.

        A fake e-mail, phone, card, IBAN, IP or URL must read as one value of its type (so
        a phone is a valid number); a national ID may read as nothing, as a BSN does without
        the word "BSN" next to it. Up to 20 draws; if none passes, the ``redact`` tag.
        """
        if self._faker is None:
            from faker import Faker

            self._faker = Faker("en_US")
        key = f"{self.seed}\x1f{type_}\x1f{value}".encode()
        rng = random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))
        silent = type_ in ("national_id", "person") or type_ not in self.detector.types
        for _ in range(20):
            self._faker.seed_instance(rng.getrandbits(64))
            new = _FAKERS[type_](value, rng, self._faker)
            found = [(s.type, s.start, s.end) for s in self.detector.find(new)]
            if new != value and (found == [(type_, 0, len(new))] or (not found and silent)):
                return new
        return f"[{type_.upper()}]"
