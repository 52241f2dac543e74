"""Helpers shared by the forgetting mitigations (their hooks: ``training/hooks.py``).

The helpers below are shared by the mitigations: option checks that raise one
:class:`~tunelab.errors.ConfigError` naming every bad option, the seeded example stream
that every per-step sample is drawn from, and the general-data language-modelling loss.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.data.tokenize import Encoded
from tunelab.errors import ConfigError
from tunelab.training.hooks import Context

__all__ = ["check_options", "general_pool", "is_number", "seeded_stream"]


# ---- option checks --------------------------------------------------------------------


def is_number(value: Any, *, low: float | None = None, high: float | None = None) -> bool:
    """A finite int/float (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def check_options(name: str, checks: Sequence[tuple[str, Any, bool, str]]) -> None:
    """Raise one ConfigError listing every ``(option, value, ok, what it must be)`` not ok."""
    problems = [
        (f"forgetting.mitigations.{name}.{option}", f"got {value!r}; must be {must}")
        for option, value, ok, must in checks
        if not ok
    ]
    if problems:
        raise ConfigError(
            f"invalid options for the {name!r} forgetting mitigation",
            problems=problems,
            hint="fix the values under forgetting.mitigations in the config",
        )


# ---- general data ---------------------------------------------------------------------


def general_pool(ctx: Context, name: str, *, prefer_replay: bool = False) -> list[Encoded]:
    """``ctx.replay`` (when preferred and given) or ``ctx.general``; never empty."""
    pool = ctx.replay if prefer_replay and ctx.replay is not None else ctx.general
    if not pool:
        raise ConfigError(
            f"forgetting.mitigations.{name} needs general-domain examples, and there are none",
            hint="raise forgetting.general_examples (or give the mitigation a `source`)",
        )
    return pool


def seeded_stream(n: int, count: int, *, seed: int, stream: str, start: int = 0) -> list[int]:
    """Positions ``start .. start+count-1`` of an endless sequence of indices into ``n`` items.

    The sequence is one seeded permutation of ``range(n)`` after another (permutation k is
    drawn from ``(seed, stream, k)``), so every item appears once before any repeats and a
    slice is a pure function of its arguments: per-step samples need no saved RNG state.
    ``stream`` separates the draws of different mitigations.
    """
    if n <= 0:
        raise ValueError("cannot draw from an empty pool")
    key = zlib.crc32(stream.encode())
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed % 2**32, key, epoch]).permutation(n)
        take = perm[offset : offset + count - len(out)].tolist()
        out.extend(take)
        pos += len(take)
    return out
