"""Helpers shared by the forgetting mitigations (their hooks: ``training/hooks.py``): the
pool of general examples and the seeded stream every per-step sample is drawn from."""

from __future__ import annotations

import zlib

import numpy as np

from tunelab.data.tokenize import Encoded
from tunelab.errors import ConfigError
from tunelab.training.hooks import Context

__all__ = ["general_pool", "seeded_stream"]


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
