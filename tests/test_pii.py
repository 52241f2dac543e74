"""PII detection and anonymisation: each recogniser alone, overlaps, policies, errors, bench.

Known-valid values come from their specifications' published examples: the Visa test card
4111 1111 1111 1111, the IBAN DE89 3704 0044 0532 0130 00 (ISO 13616 example), the BSN
111222333 (the usual 11-proof example); the NIR key is computed by hand in the test.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import socket
from collections import Counter

import pytest

from tunelab.data.pii import (
    PII_TYPES,
    STRUCTURED_TYPES,
    Anonymizer,
    PiiDetector,
    PiiSpan,
    resolve_overlaps,
)
from tunelab.data.pii_recognizers import (
    Phones,
    Urls,
    bsn_ok,
    insee_key,
    national_id_kind,
    steuer_id_check_digit,
    steuer_id_ok,
    tld_extractor,
)
from tunelab.errors import ConfigError


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


def found(detector: PiiDetector, text: str) -> list[tuple[str, str]]:
    return [(s.type, text[s.start : s.end]) for s in detector.find(text)]


def only(detector: PiiDetector, text: str, type_: str) -> list[str]:
    return [value for t, value in found(detector, text) if t == type_]


# --- recognisers, one type at a time -------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["john.doe@example.co.uk", "A.B+news@mail.example.org", "MARIE.DUPONT@EXAMPLE.FR"],
)
def test_email_found_and_not_also_a_url(detector, value):
    assert found(detector, f"write to {value}, thanks") == [("email", value)]


@pytest.mark.parametrize("text", ["user@localhost is local", "ping @support", "a@b.c is no mail"])
def test_email_negatives(detector, text):
    assert only(detector, text, "email") == []


@pytest.mark.parametrize(
    "value",
    [
        "(415) 555-0132", "415-555-0132", "415.555.0132", "+1 415-555-0132", "4155550132",
        "020 7946 0958", "+44 (0)20 7946 0958", "0207 946 0958", "0044 20 7946 0958",
        "030 12345678", "030/12345678", "+49 176 1234 5678", "04 85 33 74 06",
        "+33 4 85 33 74 06", "01.23.45.67.89", "06-12345678", "+31 6 1234 5678",
    ],
)  # fmt: skip
def test_phone_formats(value):
    text = f"call {value} today"
    assert [text[s.start : s.end] for s in Phones().find(text)] == [value]


@pytest.mark.parametrize(
    "text",
    [
        "on 15.03.2024 at 14:30", "on 2024-03-15 14:30:15", "paid $1,299.99 (12.5% off)",
        "invoice 2024-001873", "order 0201234567", "ISBN 978-3-16-148410-0",
        "SN1234567890", "ORD-2024-001873", "in 2023 2024 2025 2026", "1,500 units of 3 x 250 ml",
    ],
)  # fmt: skip
def test_dates_prices_and_codes_are_not_phones(detector, text):
    assert only(detector, text, "phone") == []


@pytest.mark.parametrize(
    "value",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "2223003122003222",
     "3782 822463 10005", "3056 930902 5904", "6011 1111 1111 1117", "3530111333300000"],
)  # fmt: skip
def test_credit_cards(detector, value):
    assert found(detector, f"card {value} was charged") == [("credit_card", value)]


@pytest.mark.parametrize(
    "text",
    ["card 4111 1111 1111 1112 (Luhn fails)", "EAN 4006381333931", "+4930123456789"],
)
def test_card_negatives(detector, text):
    assert only(detector, text, "credit_card") == []


@pytest.mark.parametrize(
    "value",
    ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32"],
)
def test_iban(detector, value):
    assert found(detector, f"IBAN {value} please") == [("iban", value)]


def test_iban_with_a_wrong_checksum_is_not_detected(detector):
    assert only(detector, "IBAN DE88 3704 0044 0532 0130 00 please", "iban") == []


@pytest.mark.parametrize(
    "value", ["192.168.1.20", "8.8.8.8", "10.0.0.0/24", "2001:db8::1", "fe80::1ff:fe23:4567:890a"]
)
def test_ip(detector, value):
    assert found(detector, f"login from {value} failed") == [("ip", value)]


@pytest.mark.parametrize(
    "text",
    ["version 1.2.3.4 is out", "see v1.2.3.4", "build 1.2.3.4.5", "the 6.0.5.42 update broke it",
     "upgraded to 4.9.5.88 today", "it is 14:30:15 now", "std::vector"],
)  # fmt: skip
def test_version_numbers_and_times_are_not_ips(detector, text):
    assert only(detector, text, "ip") == []


@pytest.mark.parametrize(
    "value",
    ["https://shop.example.com/orders/123?x=1", "http://10.0.0.1/admin", "www.example.org",
     "example.com", "example.co.uk/path/to", "docs.example.de"],
)  # fmt: skip
def test_urls(detector, value):
    assert found(detector, f"see {value}. Thanks") == [("url", value)]


@pytest.mark.parametrize(
    "text",
    ["fix main.py and README.md", "e.g. this, i.e. that", "ask Mr.Smith", "node.js rocks",
     "it is report.pdf", "now.It was", "self.data = data; app.run(debug=True)",
     "SELECT users.name FROM users WHERE users.id = 1", "x = df.at[0, 'a']"],
)  # fmt: skip
def test_url_negatives(detector, text):
    assert only(detector, text, "url") == []


def test_url_trailing_punctuation_and_parentheses():
    text = "docs (https://example.com/a_(b)) and https://example.org/x."
    spans = [text[s.start : s.end] for s in Urls().find(text)]
    assert spans == ["https://example.com/a_(b)", "https://example.org/x"]


@pytest.mark.parametrize(
    "text, value",
    [
        ("SSN 078-05-1121 on file", "078-05-1121"),
        ("my ssn is 078051121", "078051121"),
        ("NI number AB 12 34 56 C", "AB 12 34 56 C"),
        ("NINO: ab123456c", "ab123456c"),
        ("ref 1 85 05 78 006 084 91 attached", "1 85 05 78 006 084 91"),  # NIR, no keyword
        ("mijn BSN is 111222333", "111222333"),
        ("BSN: 1112.22.333", "1112.22.333"),
        ("Steuer-ID 86095742719", "86095742719"),
        ("steuerliche Identifikationsnummer 86 095 742 719", "86 095 742 719"),
    ],
)
def test_national_ids(detector, text, value):
    assert found(detector, text) == [("national_id", value)]


@pytest.mark.parametrize(
    "text",
    [
        "SSN 900-12-3456 and 666-12-3456",  # areas the SSA never assigns
        "NI number GB 12 34 56 A",  # GB is no valid NINO prefix
        "ref 1 85 05 78 006 084 92",  # NIR key off by one
        "order 111222333",  # passes the 11-proof but nothing says BSN
        "Steuer-ID 86095742718",  # check digit off by one
        "BSN 123456789",  # fails the 11-proof
    ],
)
def test_national_id_negatives(detector, text):
    assert only(detector, text, "national_id") == []


def test_checksums_against_references():
    # NIR key by hand: 1850578006084 mod 97 = 6, so 97 - 6 = 91
    assert insee_key("1850578006084") == 91
    assert insee_key("2690299341732") == 97 - 2690299341732 % 97
    assert bsn_ok("111222333") and not bsn_ok("111222334")
    # Steuer-ID: agrees with presidio's DeTaxIdRecognizer (an independent implementation)
    from presidio_analyzer.predefined_recognizers import DeTaxIdRecognizer

    reference, rng = DeTaxIdRecognizer(), random.Random(0)
    for _ in range(2000):
        body = str(rng.randint(1, 9)) + "".join(str(rng.randrange(10)) for _ in range(9))
        number = body + str(steuer_id_check_digit(body))
        assert steuer_id_ok(number) == (reference.validate_result(number) and len(set(body)) < 10)


def test_national_id_kind():
    assert national_id_kind("078-05-1121") == "us_ssn"
    assert national_id_kind("AB 12 34 56 C") == "uk_nino"
    assert national_id_kind("1 85 05 78 006 084 91") == "fr_insee"
    assert national_id_kind("111222333") == "nl_bsn"
    assert national_id_kind("86095742719") == "de_steuer_id"
    assert national_id_kind("hello") is None


# --- overlaps ------------------------------------------------------------------------


def test_resolve_overlaps_rules():
    email, inner_url = PiiSpan("email", 0, 20, 0.95), PiiSpan("url", 9, 20, 0.6)
    assert resolve_overlaps([inner_url, email]) == [email]  # contained: the container wins
    url, inner_email = PiiSpan("url", 0, 40, 0.9), PiiSpan("email", 20, 35, 0.95)
    assert resolve_overlaps([inner_email, url]) == [url]
    low, high = PiiSpan("phone", 0, 10, 0.7), PiiSpan("national_id", 5, 14, 1.0)
    assert resolve_overlaps([low, high]) == [high]  # partial: the higher score wins
    short, long_ = PiiSpan("url", 0, 10, 0.6), PiiSpan("url", 8, 25, 0.6)
    assert resolve_overlaps([short, long_]) == [long_]  # same score: the longer wins
    apart = [PiiSpan("ip", 30, 40, 0.9), PiiSpan("email", 0, 10, 0.95)]
    assert resolve_overlaps(apart) == sorted(apart, key=lambda s: s.start)


def test_find_returns_sorted_non_overlapping_spans(detector):
    text = ("Mail john.doe@example.com or see https://example.com/u?mail=a@b.com, "
            "call +44 20 7946 0958 from 10.0.0.1")  # fmt: skip
    spans = detector.find(text)
    assert [s.type for s in spans] == ["email", "url", "phone", "ip"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


# --- policies ------------------------------------------------------------------------

TEXT = (
    "Hi, reach me at +44 20 7946 0958 or john.doe@example.co.uk. Card 4111 1111 1111 1111, "
    "IBAN DE89 3704 0044 0532 0130 00, from 192.168.1.20, see https://example.com/x, "
    "SSN 078-05-1121."
)


def test_redact(detector):
    new, counts = Anonymizer(detector, "redact")(TEXT)
    assert new == (
        "Hi, reach me at [PHONE] or [EMAIL]. Card [CREDIT_CARD], IBAN [IBAN], from [IP], "
        "see [URL], SSN [NATIONAL_ID]."
    )
    assert counts == Counter({t: 1 for t in STRUCTURED_TYPES})


def test_mask_keeps_length_separators_and_card_last_four(detector):
    new, _ = Anonymizer(detector, "mask")(TEXT)
    assert len(new) == len(TEXT)
    assert "+** ** **** ****" in new and "****.***@*******.**.**" in new
    assert "**** **** **** 1111" in new and "***.***.*.**" in new
    assert "*****://*******.***/*" in new and "***-**-****" in new
    assert [c for c in new if not c.isalnum() and c != "*"] == [c for c in TEXT if not c.isalnum()]


def test_pseudonymise_is_consistent_and_seeded(detector):
    text = "Mail john@example.com, then john@example.com again; bob@example.org is new."
    first, counts = Anonymizer(detector, "pseudonymise", seed=3)(text)
    assert counts == Counter(email=3)
    fakes = [v for t, v in found(detector, first) if t == "email"]
    assert len(fakes) == 3 and fakes[0] == fakes[1] != fakes[2]
    assert "john@" not in first and "bob@" not in first
    assert Anonymizer(detector, "pseudonymise", seed=3)(text)[0] == first  # a new instance
    assert Anonymizer(detector, "pseudonymise", seed=4)(text)[0] != first


def test_pseudonymise_fakes_keep_their_type_and_shape(detector):
    anonymize = Anonymizer(detector, "pseudonymise", seed=0)
    new, counts = anonymize(TEXT)
    assert counts == Counter({t: 1 for t in STRUCTURED_TYPES})
    assert Counter(s.type for s in detector.find(new)) == counts  # fakes read as their type
    for value in ("+44 20 7946 0958", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"):
        assert value not in new
    for original in ("AB 12 34 56 C", "1112.22.333", "1 85 05 78 006 084 91", "078051121"):
        fake = anonymize.replacement("national_id", original)
        assert fake != original and len(fake) == len(original)
        assert national_id_kind(fake) == national_id_kind(original)
    other = anonymize.replacement("national_id", "X-12/34")  # no known format: same shape
    assert other != "X-12/34" and re.fullmatch(r"[A-Z]-\d\d/\d\d", other)
    fake_net = anonymize.replacement("ip", "10.0.0.0/24")
    assert fake_net.endswith("/24") and found(detector, fake_net) == [("ip", fake_net)]


# --- configuration errors ------------------------------------------------------------


def test_unknown_type_suggests_the_closest():
    with pytest.raises(ConfigError) as info:
        PiiDetector(types=["emial", "phone"])
    assert info.value.problems[0][0] == "data.anonymize.types"
    assert "did you mean 'email'" in str(info.value)


def test_unknown_policy(detector):
    with pytest.raises(ConfigError, match="did you mean 'pseudonymise'"):
        Anonymizer(detector, "pseudonymize")  # type: ignore[arg-type]


def test_person_needs_a_name_model():
    with pytest.raises(ConfigError) as info:
        PiiDetector(types=["person"])
    assert info.value.problems[0][0] == "data.anonymize.name_model"


def test_missing_name_model(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.anonymize\.name_model"):
        PiiDetector(name_model=tmp_path / "nope")


def test_name_model_without_ner(tmp_path):
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(ConfigError, match="no 'ner' component"):
        PiiDetector(name_model=tmp_path / "blank")


def test_name_model_with_ner(tmp_path):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("ner").add_label("PERSON")
    nlp.initialize()
    nlp.to_disk(tmp_path / "ner")
    names = PiiDetector(types=["email", "person"], name_model=tmp_path / "ner")
    assert names.names_available and "spaCy NER model" in names.note
    assert found(names, "John wrote from john@example.com")[-1:] == [("email", "john@example.com")]


def test_note_without_name_model(detector):
    assert not detector.names_available
    assert "not detected (no name model" in detector.note
    assert set(detector.types) == set(STRUCTURED_TYPES) and "person" in PII_TYPES


# --- no network, benchmark -----------------------------------------------------------


def test_no_network_is_attempted(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    tld_extractor.cache_clear()  # rebuild the extractor under the patch
    with caplog.at_level(logging.DEBUG):
        fresh = PiiDetector(types=["email", "url"])
        text = "Mail ana@example.co.uk or visit www.example.org and shop.example.de/x"
        assert [t for t, _ in found(fresh, text)] == ["email", "url", "url"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_bench_pii_counts_are_consistent():
    from tunelab.recipes.bench.pii import bench_pii

    result = bench_pii(n=200, seed=1)
    for name, m in result["per_type"].items():
        assert m["support"] > 0, name
        assert m["tp"] + m["fn"] == m["support"]
        assert m["recall"] == round(m["tp"] / m["support"], 4)
        assert m["precision"] == round(m["tp"] / (m["tp"] + m["fp"]), 4)
        assert m["recall"] >= 0.9 and m["precision"] >= 0.9, (name, m)
    assert set(result["per_locale"]) == {"en_US", "en_GB", "de_DE", "fr_FR", "nl_NL"}
    assert result["rows_per_second"] > 0 and result["targets"]["met"] in (True, False)
    assert result == {**result, "rows": 200, "seed": 1}
