"""Catastrophic-forgetting mitigations: one file each, one registry line each.

Every mitigation implements the hooks of :class:`Mitigation` (``training/hooks.py`` says
when the training loop calls them) and is built from its options: the section the config
schema declares for it (``config/forgetting_section.py``), the one place each option and
its bounds are written. Several compose freely (their penalties add up). They run in the
registry's order, which puts WiSE's interpolation after every other ``finish``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.config.forgetting_section import MitigationsConfig
from tunelab.forgetting.mitigations.ewc import EWC
from tunelab.forgetting.mitigations.kd import KD
from tunelab.forgetting.mitigations.l2sp import L2SP
from tunelab.forgetting.mitigations.replay import Replay
from tunelab.forgetting.mitigations.si import SI
from tunelab.forgetting.mitigations.wise import WiSE
from tunelab.training.hooks import Context, Mitigation

__all__ = ["MITIGATIONS", "Context", "Mitigation", "build_mitigations"]

# name (a field of MitigationsConfig) -> the class, built from that field's section
MITIGATIONS: dict[str, Callable[[Any], Mitigation]] = {
    "replay": Replay,
    "ewc": EWC,
    "si": SI,
    "l2sp": L2SP,
    "kd": KD,
    "wise": WiSE,
}


def build_mitigations(options: MitigationsConfig) -> list[Mitigation]:
    """One instance per mitigation set in ``options`` (``forgetting.mitigations``, already
    validated by the config schema, which declares every option once), in registry order."""
    chosen = {name: getattr(options, name) for name in MITIGATIONS}
    return [cls(chosen[name]) for name, cls in MITIGATIONS.items() if chosen[name] is not None]
