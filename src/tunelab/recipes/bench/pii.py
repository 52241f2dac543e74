"""PII detection benchmark: synthetic texts with known spans, recall/precision per type.

Rows are support tickets, chat messages and reviews from templates, filled by Faker in
five locales (en_US, en_GB, de_DE, fr_FR, nl_NL) with values of every structured type in
the formats people write:

- phones: national and international formats of the locale's country (libphonenumber's
  NATIONAL/INTERNATIONAL/E164 and hand-written variants such as ``415-555-0132``,
  ``(415)555-0132``, ``030/12345678``, ``+44 (0)20 7946 0958``, ``0044 ...``,
  ``0207 946 0958``, ``06 1234 5678``, ``+31 6 1234 5678``). Faker's numbers are random
  digits in a national layout; only those libphonenumber holds valid for the country are
  used (an invalid number is nobody's phone), so the detector and the truth share
  libphonenumber's metadata;
- e-mails: Faker's, upper case, ``user+tag@mail.domain``, ``first.last@sub.domain``;
- cards: Visa (16 and 13 digits), Mastercard (51-55 and 2221-2720), Amex, Discover,
  Diners, JCB; compact, spaced and dashed (4-4-4-4, Amex 4-6-5, Diners 4-6-4);
- IBANs of the locale's country (GB for en_US), compact and in groups of 4;
- IPv4 (public, private, with a CIDR suffix) and IPv6 (full and ``::``-compressed);
- URLs with a scheme, with ``www.``, and bare domains with and without a path;
- national IDs: US SSN (``123-45-6789`` and 9 digits), UK NINO (with and without
  spaces), German Steuer-ID (11 digits, or ``12 345 678 901``), French NIR (15 digits,
  compact or ``1 85 05 78 006 084 91``), Dutch BSN (9 digits or ``1234.56.782``). The
  template always names the ID (``my BSN is ...``), as real text does: a bare 9- or
  11-digit number is only an ID for the detector when a keyword is near it.

About 40% of the rows (and parts of the others) are distractors with numbers that are not
personal data: prices, dates, times, order, invoice, customer and transaction numbers,
version numbers (also 4-part ones that are valid IPv4s), percentages, years, quantities,
product codes (SKU, ISBN, EAN, IMEI, tracking, serial), ZIP codes, coordinates, file names
and abbreviations. Person names appear in the text but are not scored (no NER model).

Matching rule: a true span is found (a true positive) when a detected span of the same
type covers at least 50% of its characters; a detected span that covers 50% of no true
span of its type is a false positive. recall = TP / support, precision = TP / (TP + FP).
Everything is a function of ``(n, seed)`` and the installed Faker and libphonenumber.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.data.pii import STRUCTURED_TYPES, Anonymizer, PiiDetector, PiiSpan
from tunelab.data.pii_recognizers import steuer_id_check_digit

__all__ = ["TARGET_PRECISION", "TARGET_RECALL", "BenchRow", "bench_pii", "make_rows", "score"]

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL")
REGION = {"en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "nl_NL": "NL"}
TARGET_RECALL, TARGET_PRECISION = 0.98, 0.95
PII_SHARE = 0.6  # the other rows hold distractors only

PII_TEMPLATES = (
    "Hi, I can't log in to my account since {date}. Please call me back on {phone} or write "
    "to {email}.",
    "Re {order}: {name} reports a double charge of {price} on card {credit_card}. "
    "Refund to {iban} please.",
    "hey it's {first}!! new number: {phone} - save it, the old one is gone",
    "Great service, the agent emailed me at {email} within {qty}. 5 stars.",
    "Security alert: new sign-in from {ip} at {time} on {date}. Not you? Reset at {url}",
    "Please send the invoice for {order} to {email}; our IBAN is {iban}.",
    "The docs are at {url} (version {version}), the status page at {url}.",
    "Details here: {url}. Or ask {first} ({email}).",
    "Server log: connection from {ip} refused at {time}, retry from {ip} ok.",
    "For the rental form: my {id_label} is {national_id}, phone {phone}.",
    "{id_label}: {national_id}. Card on file: {credit_card}, thanks!",
    "Server {ip} keeps timing out since the {version} update; the backup at {ip} is fine.",
    "Paid {price} with {credit_card} on {date}, still no confirmation at {email}.",
    "Loved the hotel! Booked through {url} and they called me on {phone} at {time}.",
    "Wire {price} to {iban} (ref {order}) and send proof to {email}.",
    "My {id_label} is {national_id} - do you need anything else for the claim?",
    "ok so the router is on {ip} and the NAS on {ip}, ping me at {phone}",
    "Hallo, bitte überweisen Sie {price} auf {iban}. Rückfragen unter {phone}.",
    "Bonjour, vous pouvez me joindre au {phone} ou par mail : {email}. Merci !",
    "Hoi, bel me even op {phone} of mail naar {email}, groetjes {first}",
    "Please update my details: {id_label} {national_id}, new e-mail {email}.",
    "Shop review: ordered {qty} from {url}, paid with {credit_card}, arrived {date}.",
)
DISTRACTOR_TEMPLATES = (
    "Your {order} was placed on {date} at {time} for {price} ({qty}, {percent} off).",
    "Version {version} fixes the crash in {file}; see the notes from {date}.",
    "We shipped {qty} in {year} and expect {percent} growth, i.e. about {qty} more.",
    "Product {code} is back in stock at {price}, delivery by {date}, e.g. before {time}.",
    "Invoice for {order} of {date}: {qty} at {price} each, total {price}.",
    "Upgraded to {version} on {date}; {file} and {file} were regenerated in {year}.",
    "The meeting moved from {time} to {time} on {date}, room {qty}.",
    "Our {year} survey: {percent} of {qty} answered; the full table is in {file}.",
    "Thanks {name}! Your return {order} for {code} ({price}) was approved on {date}.",
    "Battery at {percent}, firmware {version}, serial {code}, last sync {date} {time}.",
)


@dataclass(frozen=True)
class BenchRow:
    """A text, its true PII spans ``(type, start, end)`` and the locale of its values."""

    text: str
    spans: tuple[tuple[str, int, int], ...]
    locale: str


def _phone(fake: Any, rng: random.Random, locale: str) -> str:
    import phonenumbers as pn

    region = REGION[locale]
    number = pn.example_number(region)
    if number is None:
        raise ValueError(f"libphonenumber has no example number for {region}")
    for _ in range(100):
        try:
            candidate = pn.parse(fake.phone_number(), region)
        except pn.NumberParseException:
            continue
        if pn.is_valid_number(candidate):
            number, number.extension = candidate, None
            break
    fmt = pn.PhoneNumberFormat
    national = pn.format_number(number, fmt.NATIONAL)
    intl = pn.format_number(number, fmt.INTERNATIONAL)
    cc, d = str(number.country_code), re.sub(r"\D", "", national)
    variants = [national, intl, pn.format_number(number, fmt.E164)]
    if region == "US":
        a, b, c = d[:3], d[3:6], d[6:]
        variants += [f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1-{a}-{b}-{c}", f"+1 {a} {b} {c}",
                     f"({a}){b}-{c}", f"1 ({a}) {b}-{c}"]  # fmt: skip
        return rng.choice(variants)
    variants += [
        intl.replace(f"+{cc} ", f"+{cc} (0)", 1),  # +44 (0)20 7946 0958
        intl.replace("+", "00", 1),  # 0044 20 7946 0958
        national.replace(" ", "/" if region == "DE" else "-", 1),  # 030/12345678, 06-12345678
    ]
    first, _, rest = national.partition(" ")
    if re.fullmatch(r"\d{8}", rest):  # a long subscriber number, split in two by people
        variants += [f"{first} {rest[:4]} {rest[4:]}", f"+{cc} {first[1:]} {rest[:4]} {rest[4:]}"]
    if region == "GB" and len(d) == 11:
        variants.append(f"{d[:4]} {d[4:7]} {d[7:]}")  # 0207 946 0958
    if region == "FR":
        variants += [national.replace(" ", "."), national.replace(" ", "-")]
    return rng.choice(variants)


def _group4(value: str, sep: str = " ") -> str:
    return sep.join(value[i : i + 4] for i in range(0, len(value), 4))


CARD_BRANDS = ("visa16", "visa13", "mastercard", "amex", "discover", "diners", "jcb16")


def _card(fake: Any, rng: random.Random, locale: str) -> str:
    brand = rng.choice(CARD_BRANDS)
    number = fake.credit_card_number(brand)
    if brand == "mastercard" and rng.random() < 0.5:  # Faker draws 2-series rarely
        number = fake.credit_card_number("mastercard")
    style = rng.choice(("compact", " ", "-"))
    if style == "compact" or len(number) == 13:
        return str(number)
    if len(number) in (14, 15):  # Diners 4-6-4, Amex 4-6-5
        return style.join((number[:4], number[4:10], number[10:]))
    return _group4(number, style)


def _iban(fake: Any, rng: random.Random, locale: str) -> str:
    value = str(fake.iban())
    return value if rng.random() < 0.5 else _group4(value)


def _ip(fake: Any, rng: random.Random, locale: str) -> str:
    pick = rng.random()
    if pick < 0.35:
        return str(fake.ipv4_public())
    if pick < 0.6:
        return str(fake.ipv4_private())
    if pick < 0.45:
        return f"{fake.ipv4_network_class()}".split("/")[0] + f"/{rng.choice((8, 16, 24, 28))}"
    groups = str(fake.ipv6()).split(":")
    if pick < 0.8:
        groups[2:5] = ["0", "0", "0"]
    return str(ipaddress.IPv6Address(":".join(groups)))


def _url(fake: Any, rng: random.Random, locale: str) -> str:
    domain = fake.domain_name()
    return rng.choice((
        fake.url(), fake.uri(), domain, f"www.{domain}", f"{domain}/{fake.uri_path()}",
        f"https://{domain}/{fake.uri_path()}?id={rng.randint(1, 9999)}",
    ))  # fmt: skip


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _steuer_id(rng: random.Random) -> str:
    while True:
        body = str(rng.randint(1, 9)) + _digits(rng, 9)
        if max(Counter(body).values()) <= 3 and len(set(body)) < 10:
            return body + str(steuer_id_check_digit(body))


def _nino(rng: random.Random) -> str:
    while True:
        prefix = rng.choice("ABCEGHJKLMPRSTWXY") + rng.choice("ABCEGHJLMNPRSTWXY")
        if prefix not in ("BG", "GB", "NK", "KN", "NT", "TN"):
            return prefix + _digits(rng, 6) + rng.choice("ABCD")


ID_LABELS = {
    "en_US": ("SSN", "social security number", "Social Security no."),
    "en_GB": ("National Insurance number", "NI number", "NINO"),
    "de_DE": ("Steuer-ID", "steuerliche Identifikationsnummer", "IdNr"),
    "fr_FR": ("numéro de sécurité sociale", "NIR", "numéro de sécu"),
    "nl_NL": ("BSN", "burgerservicenummer", "sofinummer"),
}


def _national_id(fake: Any, rng: random.Random, locale: str) -> str:
    spaced = rng.random() < 0.5
    if locale == "en_US":
        value = str(fake.ssn())
        return value if spaced else value.replace("-", "")
    if locale == "en_GB":
        v = _nino(rng)
        return f"{v[:2]} {v[2:4]} {v[4:6]} {v[6:8]} {v[8]}" if spaced else v
    if locale == "de_DE":
        v = _steuer_id(rng)
        return f"{v[:2]} {v[2:5]} {v[5:8]} {v[8:]}" if spaced else v
    if locale == "fr_FR":
        v = str(fake.ssn())
        return " ".join((v[0], v[1:3], v[3:5], v[5:7], v[7:10], v[10:13], v[13:])) if spaced else v
    v = str(fake.ssn())
    return f"{v[:4]}.{v[4:6]}.{v[6:]}" if spaced else v


PII_VALUES: dict[str, Callable[[Any, random.Random, str], str]] = {
    "email": lambda fake, rng, loc: rng.choice((
        fake.email(), fake.free_email(), fake.company_email(), fake.email().upper(),
        f"{fake.user_name()}+{fake.word()}@mail.{fake.domain_name()}",
        re.sub(r"[^a-z.]", "", f"{fake.first_name()}.{fake.last_name()}".lower())
        + f"@{fake.domain_name(2)}",
    )),
    "phone": _phone, "credit_card": _card, "iban": _iban, "ip": _ip, "url": _url,
    "national_id": _national_id,
}  # fmt: skip


def _imei(rng: random.Random) -> str:
    """A 15-digit IMEI: Luhn-valid, like a card number, but no card."""
    payload = "35" + _digits(rng, 12)
    total = sum(int(c) * (2 if i % 2 == 0 else 1) // 10 + int(c) * (2 if i % 2 == 0 else 1) % 10
                for i, c in enumerate(reversed(payload)))  # fmt: skip
    return payload + str(-total % 10)


def _filler(name: str, fake: Any, rng: random.Random, locale: str) -> str:
    r, d = rng.randint, _digits
    table: dict[str, Callable[[], str]] = {
        "name": fake.name, "first": fake.first_name,
        "id_label": lambda: rng.choice(ID_LABELS[locale]),
        "price": lambda: rng.choice((f"${r(1, 2999)}.{d(rng, 2)}", f"€{r(1, 999)},{d(rng, 2)}",
                                     f"£{r(1, 99)}.{d(rng, 2)}", f"{r(1, 9)}.{d(rng, 3)},00 €",
                                     f"${r(1, 9)},{d(rng, 3)}.{d(rng, 2)}")),
        "date": lambda: fake.date(rng.choice(("%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y",
                                              "%B %d, %Y", "%d %b %Y"))),
        "time": lambda: rng.choice((fake.time("%H:%M"), fake.time("%H:%M:%S"),
                                    fake.time("%I:%M %p"))),
        "order": lambda: rng.choice((f"#{d(rng, 5)}", f"ORD-{r(2019, 2025)}-{d(rng, 6)}",
                                     f"A-{d(rng, 5)}-{d(rng, 2)}", f"no. {d(rng, 7)}",
                                     f"INV{d(rng, 8)}", f"{r(100, 999)}-{d(rng, 7)}-{d(rng, 7)}",
                                     f"order {r(1, 9)}{d(rng, 9)}", f"customer no. {d(rng, 8)}",
                                     f"transaction {r(1, 9)}{d(rng, 10)}")),
        "version": lambda: rng.choice((f"v{r(1, 9)}.{r(0, 20)}.{r(0, 9)}",
                                       f"{r(1, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 99)}",
                                       f"{r(2, 6)}.{r(0, 19)}.0-{r(10, 150)}-generic",
                                       f"version {r(1, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 9)}")),
        "percent": lambda: rng.choice((f"{r(1, 99)}%", f"{r(1, 99)}.{r(0, 9)} %")),
        "year": lambda: str(r(1990, 2030)),
        "qty": lambda: rng.choice((f"{r(2, 12)} x {r(1, 9) * 50} ml", f"{r(1, 48)} hours",
                                   f"{r(1, 9)},{d(rng, 3)} units", f"{r(1, 30)} kg",
                                   f"{r(2, 9)} items")),
        "code": lambda: rng.choice((f"SKU {d(rng, 4)}-XL-{d(rng, 2)}", f"RTX-{r(1000, 9999)}",
                                    f"ISBN 978-{r(0, 9)}-{d(rng, 2)}-{d(rng, 6)}-{r(0, 9)}",
                                    f"EAN {rng.choice('4589')}{d(rng, 12)}", f"SN{d(rng, 10)}",
                                    f"{r(1920, 3840)}x{r(1080, 2160)}", f"IMEI {_imei(rng)}",
                                    f"tracking 1Z{d(rng, 3)}AA{d(rng, 10)}",
                                    f"ZIP {d(rng, 5)}",
                                    f"{r(10, 89)}.{d(rng, 4)}, {r(1, 9)}.{d(rng, 4)}")),
        "file": lambda: rng.choice(("main.py", "README.md", "report.pdf", "model.pt",
                                    "config.yaml", "data.csv", "setup.sh", "notes.txt")),
    }  # fmt: skip
    return str(table[name]())


def _fill(template: str, fake: Any, rng: random.Random, locale: str) -> BenchRow:
    text, spans = "", []
    for i, piece in enumerate(re.split(r"\{(\w+)\}", template)):
        if i % 2 == 0:
            text += piece
        elif piece in PII_VALUES:
            value = PII_VALUES[piece](fake, rng, locale)
            spans.append((piece, len(text), len(text) + len(value)))
            text += value
        else:
            text += _filler(piece, fake, rng, locale)
    return BenchRow(text, tuple(spans), locale)


def make_rows(n: int, seed: int = 0) -> list[BenchRow]:
    """``n`` rows; PII rows cycle through the structured types so each gets its share."""
    from faker import Faker

    rng = random.Random(seed)
    fakes = {loc: Faker(loc) for loc in LOCALES}
    for i, fake in enumerate(fakes.values()):
        fake.seed_instance(seed * 31 + i)
    by_type = {t: [tpl for tpl in PII_TEMPLATES if "{" + t + "}" in tpl] for t in STRUCTURED_TYPES}
    rows = []
    for i in range(n):
        locale = rng.choice(LOCALES)
        if rng.random() < PII_SHARE:
            template = rng.choice(by_type[STRUCTURED_TYPES[i % len(STRUCTURED_TYPES)]])
        else:
            template = rng.choice(DISTRACTOR_TEMPLATES)
        rows.append(_fill(template, fakes[locale], rng, locale))
    return rows


def _covers(span: tuple[str, int, int], other: tuple[str, int, int]) -> bool:
    """``span`` has ``other``'s type and covers at least half of ``other``."""
    overlap = min(span[2], other[2]) - max(span[1], other[1])
    return span[0] == other[0] and overlap * 2 >= other[2] - other[1]


def score(rows: list[BenchRow], found: list[list[PiiSpan]]) -> dict[str, Any]:
    """Counts and rates per type and recall per locale, by the module's matching rule."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    support: Counter[str] = Counter()
    loc_tp: dict[str, Counter[str]] = defaultdict(Counter)
    loc_support: dict[str, Counter[str]] = defaultdict(Counter)
    for row, spans in zip(rows, found, strict=True):
        detected = [(s.type, s.start, s.end) for s in spans]
        for true in row.spans:
            support[true[0]] += 1
            loc_support[row.locale][true[0]] += 1
            if any(_covers(d, true) for d in detected):
                tp[true[0]] += 1
                loc_tp[row.locale][true[0]] += 1
        for d in detected:
            if not any(_covers(d, true) for true in row.spans):
                fp[d[0]] += 1
    per_type = {}
    for t in STRUCTURED_TYPES:
        per_type[t] = {
            "support": support[t], "tp": tp[t], "fp": fp[t], "fn": support[t] - tp[t],
            "recall": round(tp[t] / support[t], 4) if support[t] else None,
            "precision": round(tp[t] / (tp[t] + fp[t]), 4) if tp[t] + fp[t] else None,
        }  # fmt: skip
    by_locale = {}
    for loc in LOCALES:
        n = sum(loc_support[loc].values())
        by_locale[loc] = {
            "support": n,
            "recall": round(sum(loc_tp[loc].values()) / n, 4) if n else None,
            "recall_by_type": {
                t: round(loc_tp[loc][t] / c, 4) for t, c in loc_support[loc].items()
            },
        }
    return {"per_type": per_type, "per_locale": by_locale}


def _texts_of(rows: list[BenchRow], length: int, count: int) -> list[str]:
    """``count`` texts of about ``length`` characters, each joined from consecutive rows."""
    texts, current = [], ""
    for i in range(len(rows) * count):
        current = f"{current} {rows[i % len(rows)].text}".strip()
        if len(current) >= length:
            texts.append(current[:length])
            current = ""
            if len(texts) == count:
                break
    return texts


_PROSE = (
    "Hi team, the blue jacket arrived in the wrong size and I would like to exchange it for "
    "a larger one. Could you tell me how the return works and whether I need the original "
    "box? The fabric is lovely and the colour matches the photos, so I would rather keep the "
    "style than ask for a refund. Thanks a lot for your help with this!"
)


def _rows_per_second(fn: Callable[[str], object], texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        fn(text)
    return round(len(texts) / (time.perf_counter() - started), 1)


def _bare_ids(detector: PiiDetector, per_locale: int, seed: int) -> dict[str, float]:
    """Recall on national IDs in a sentence that does not name them (not a target)."""
    from faker import Faker

    recall = {}
    for i, locale in enumerate(LOCALES):
        fake, rng = Faker(locale), random.Random(seed * 7 + i)
        fake.seed_instance(seed * 7 + i)
        rows = [_fill("Here it is: {national_id}.", fake, rng, locale) for _ in range(per_locale)]
        hits = sum(
            any(_covers((s.type, s.start, s.end), row.spans[0]) for s in detector.find(row.text))
            for row in rows
        )
        recall[locale] = round(hits / per_locale, 4)
    return recall


def _real_text(anonymize: Anonymizer, n: int, seed: int) -> dict[str, Any]:
    """What the detector finds in real text without planted PII (embedded instruction rows:
    film reviews, chatbot Q&A, code), and the anonymiser's speed on every field of a row."""
    from tunelab.recipes.bench.synthetic import instruction_rows

    rows = instruction_rows(n, seed)
    fields = [row[k] for row in rows for k in ("instruction", "input", "output") if row[k]]
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    for text in fields:
        counts += anonymize(text)[1]
    seconds = time.perf_counter() - started
    found = sorted({
        (s.type, text[s.start : s.end]) for text in fields for s in anonymize.detector.find(text)
    })  # fmt: skip
    return {"rows": n, "mean_row_chars": round(sum(map(len, fields)) / n, 1),
            "spans_by_type": dict(counts), "distinct_spans": [list(f) for f in found[:20]],
            "rows_per_second": round(n / seconds, 1)}  # fmt: skip


def bench_pii(n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Detection quality and speed on ``n`` synthetic rows (see the module docstring).

    ``national_id_without_keyword``: recall per locale on IDs in a sentence that does not
    name them (the BSN, the Steuer-ID and a 9-digit SSN then go undetected by design).
    ``real_text``: spans found in up to 2000 real instruction rows that hold no planted
    PII (every one is a false positive unless it is real contact data), and the anonymiser's
    rows/s on them. ``anonymizer_rows_per_second`` times ``Anonymizer(policy="redact")`` on
    300-character texts: prose without digits, distractors only (numbers but no PII), and
    PII-bearing texts joined from PII rows (several values each).
    """
    rows = make_rows(n, seed)
    started = time.perf_counter()
    detector = PiiDetector()
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    found = [detector.find(row.text) for row in rows]
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"rows": n, "seed": seed, **score(rows, found)}
    missed = [
        f"{t}: recall {m['recall']}, precision {m['precision']}"
        for t, m in result["per_type"].items()
        if (m["recall"] or 0) < TARGET_RECALL or (m["precision"] or 0) < TARGET_PRECISION
    ]
    result["targets"] = {"recall": TARGET_RECALL, "precision": TARGET_PRECISION,
                         "met": not missed, "missed": missed}  # fmt: skip
    result["rows_per_second"] = round(n / seconds, 1)
    result["mean_row_chars"] = round(sum(len(r.text) for r in rows) / n, 1)
    result["detector_build_seconds"] = round(build_seconds, 2)
    result["national_id_without_keyword"] = _bare_ids(detector, max(20, n // 20), seed)
    anonymize = Anonymizer(detector, "redact")
    count = max(50, min(n, 500))
    pii_rows = [r for r in rows if r.spans]
    distractors = [r for r in rows if not r.spans]
    result["real_text"] = _real_text(anonymize, min(n, 2000), seed)
    result["anonymizer_rows_per_second"] = {
        "chars": 300,
        "prose_no_digits": _rows_per_second(anonymize, [_PROSE[:300]] * count),
        "numbers_no_pii": _rows_per_second(anonymize, _texts_of(distractors, 300, count)),
        "with_pii": _rows_per_second(anonymize, _texts_of(pii_rows, 300, count)),
    }
    return result
