"""Input checks shared by every metric: one place for the error messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tunelab.errors import DataError

Task = Literal["classification", "generation"]


def check_inputs(name: str, predictions: Sequence[str], references: Sequence[str]) -> None:
    """Raise ``DataError`` when the inputs are empty or of different lengths."""
    if len(predictions) != len(references):
        raise DataError(
            f"metric '{name}': {len(predictions)} predictions but {len(references)} references",
            hint="pass exactly one prediction per reference, in the same order",
        )
    if not references:
        raise DataError(
            f"metric '{name}': no examples to score",
            hint="check that the test split is not empty",
        )
