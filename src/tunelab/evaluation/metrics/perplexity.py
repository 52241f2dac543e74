"""Perplexity from a summed negative log-likelihood."""

from __future__ import annotations

import math

from tunelab.errors import DataError


def perplexity(nll_sum: float, token_count: int) -> float:
    """PPL = exp(nll_sum / token_count), with ``nll_sum`` the natural-log NLL summed over
    ``token_count`` scored tokens (Jelinek et al., 1977).

    Summing before dividing weights every token equally, unlike a mean of per-batch
    perplexities. Returns ``inf`` when the exponent overflows a float.
    """
    if token_count <= 0:
        raise DataError(
            f"perplexity needs at least one scored token, got token_count={token_count}",
            hint="check that the split is not empty and that labels are not all masked",
        )
    if not nll_sum >= 0:  # also catches NaN
        raise DataError(f"nll_sum must be a non-negative number, got {nll_sum}")
    try:
        return math.exp(nll_sum / token_count)
    except OverflowError:
        return math.inf
