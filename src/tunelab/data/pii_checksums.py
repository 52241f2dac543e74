"""Checksums of national IDs: validate what the recognisers find, and build valid fakes."""

from __future__ import annotations

from collections import Counter

__all__ = ["bsn_ok", "insee_key", "insee_ok", "ssn_ok", "steuer_id_check_digit", "steuer_id_ok"]


def ssn_ok(digits: str) -> bool:
    """US SSN validity (SSA rules): area not 000, 666 or 900-999; group and serial not 0."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (
        len(digits) == 9 and area not in ("000", "666") and area[0] != "9"
        and group != "00" and serial != "0000" and len(set(digits)) > 1
    )  # fmt: skip


def bsn_ok(digits: str) -> bool:
    """Dutch BSN 11-proof: ``9*d1 + 8*d2 + ... + 2*d8 - d9 ≡ 0 (mod 11)``, not all zero."""
    if len(digits) != 9 or not digits.isdigit() or digits == "0" * 9:
        return False
    total = sum(w * int(d) for w, d in zip((9, 8, 7, 6, 5, 4, 3, 2, -1), digits, strict=True))
    return total % 11 == 0


def steuer_id_check_digit(first10: str) -> int:
    """Check digit of a German Steuer-ID: ISO 7064 MOD 11,10 over its first 10 digits."""
    product = 10
    for d in first10:
        total = (int(d) + product) % 10 or 10
        product = total * 2 % 11
    return (11 - product) % 10


def steuer_id_ok(digits: str) -> bool:
    """11 digits, no leading 0, no digit more than 3 times in the first 10, check digit."""
    if len(digits) != 11 or digits[0] == "0":
        return False
    counts = Counter(digits[:10]).values()
    return (
        max(counts) <= 3
        and len(counts) < 10
        and steuer_id_check_digit(digits[:10]) == int(digits[10])
    )


def insee_key(first13: str) -> int:
    """French NIR key: ``97 - (n mod 97)``, n the first 13 characters, 2A/2B as 19/18."""
    n = int(first13.upper().replace("2A", "19").replace("2B", "18"))
    return 97 - n % 97


def insee_ok(value: str) -> bool:
    """A French NIR: a plausible birth month and the mod-97 key."""
    month = int(value[3:5])
    months_ok = 1 <= month <= 12 or 20 <= month <= 42 or month >= 50
    return months_ok and insee_key(value[:13]) == int(value[13:])
