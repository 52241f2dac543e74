"""Catastrophic-forgetting mitigations: one file each, one registry line each.

Every mitigation implements the hooks of :class:`Mitigation` (see ``base.py`` for when the
training loop calls them); several compose freely (their penalties add up). They run in
the registry's order, which puts WiSE's interpolation after every other ``finish``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from tunelab.errors import ConfigError
from tunelab.forgetting.mitigations.ewc import EWC
from tunelab.forgetting.mitigations.kd import KD
from tunelab.forgetting.mitigations.l2sp import L2SP
from tunelab.forgetting.mitigations.replay import Replay
from tunelab.forgetting.mitigations.si import SI
from tunelab.forgetting.mitigations.wise import WiSE
from tunelab.training.hooks import Context, Mitigation

__all__ = ["MITIGATIONS", "Context", "Mitigation", "build_mitigations"]

MITIGATIONS: dict[str, type[Mitigation]] = {
    "replay": Replay,
    "ewc": EWC,
    "si": SI,
    "l2sp": L2SP,
    "kd": KD,
    "wise": WiSE,
}


def build_mitigations(spec: Mapping[str, Mapping[str, Any] | None]) -> list[Mitigation]:
    """One instance per entry of ``spec`` (name → constructor options), in registry order.

    Raises one ConfigError listing every unknown name or option (with the closest valid
    one) and, from the constructors, every invalid value.
    """
    problems: list[tuple[str, str]] = []
    for name, options in spec.items():
        if name not in MITIGATIONS:
            problems.append((f"forgetting.mitigations.{name}", _unknown(name, list(MITIGATIONS))))
            continue
        accepted = list(inspect.signature(MITIGATIONS[name]).parameters)
        for option in options or {}:
            if option not in accepted:
                path = f"forgetting.mitigations.{name}.{option}"
                problems.append((path, _unknown(option, accepted)))
    if problems:
        raise ConfigError(
            "invalid forgetting mitigations",
            problems=problems,
            hint=f"mitigations: {', '.join(MITIGATIONS)}",
        )
    return [cls(**dict(spec[name] or {})) for name, cls in MITIGATIONS.items() if name in spec]


def _unknown(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown; choose from {', '.join(choices)}{hint}"
