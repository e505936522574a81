"""Who shares what: model units, their sharing scopes and the branch keys they travel under.

The per-strategy rows of the sharing table live in edge.learning.strategies.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import NamedTuple


class Scope(str, Enum):
    """With which neighbours a unit is averaged; the branch key encodes the scope."""

    PRIVATE = "private"
    ALL = "all"              # every neighbour holding the unit
    MODALITY = "modality"    # neighbours holding the unit's modality
    COMBINATION = "combination"  # neighbours holding the same modality combination
    TASK = "task"            # the whole model, with neighbours holding the identical modality set


class Unit(NamedTuple):
    """A piece of an agent's model that moves as one: kind plus the modality it belongs to."""

    kind: str            # one of KINDS
    modality: str = ""   # for enc, syn, head_u


# Units of the sliced (fission) architecture and of the plain late-fusion one ("late" is the
# plain model's fusion-and-classifier MLP over its encoders' outputs).
KINDS = ("enc", "syn", "fuse", "head_r", "head_u", "head_s", "late", "comb")
_SCOPE_CODES = {"-": Scope.PRIVATE, "A": Scope.ALL, "M": Scope.MODALITY, "C": Scope.COMBINATION,
                "T": Scope.TASK}
# One strategy's row: a scope code per kind of KINDS (see edge.learning.strategies).
SharingRow = tuple[str, ...]


def combination(modalities: tuple[str, ...]) -> str:
    """Label of a modality combination, e.g. 'accel+gyro' (modalities in fleet order)."""
    return "+".join(modalities)


def units_for(modalities: tuple[str, ...], arch: str) -> list[Unit]:
    """The units an agent holding `modalities` has under architecture `arch`."""
    multi = len(modalities) > 1
    units = [Unit("enc", m) for m in modalities]
    if arch == "sliced":
        if multi:
            units += [Unit("syn", m) for m in modalities] + [Unit("fuse")]
        units += [Unit("head_r")] + [Unit("head_u", m) for m in modalities]
        if multi:
            units.append(Unit("head_s"))
    else:
        units.append(Unit("late"))
    return units


# `model.synergy_scope` as resolved: "combination", "modality", or modality -> one of the two.
SynergySetting = str | Mapping[str, str]


def scope_of(row: SharingRow, unit: Unit, share_heads: bool,
             synergy: SynergySetting = "combination") -> Scope:
    """How widely a strategy with sharing row `row` shares `unit`.

    `synergy` (`model.synergy_scope`) re-scopes the synergy projections s_m of a row that shares
    them by combination (parse): by modality for "modality" or for the modalities a mapping says
    so; a row sharing them otherwise keeps its own scope.

    Raises
    ------
    ValueError
        For "auto" (resolved before round 0, edge.learning.auto_model) or an unknown setting.
    """
    cell = row[KINDS.index(unit.kind)]
    if cell.endswith("?") and not share_heads:
        return Scope.PRIVATE
    scope = _SCOPE_CODES[cell.rstrip("?")]
    if unit.kind != "syn" or scope is not Scope.COMBINATION:
        return scope
    wanted = synergy if isinstance(synergy, str) else synergy.get(unit.modality, "combination")
    if wanted not in ("combination", "modality"):
        raise ValueError(f"model.synergy_scope: expected combination or modality (auto is resolved "
                         f"before round 0), got {wanted!r}")
    return Scope(wanted)


def branch_key(unit: Unit, scope: Scope, modalities: tuple[str, ...]) -> str | None:
    """The branch a unit travels in; agents average a branch with neighbours holding the same key.

    None means the unit stays private.
    """
    combo = combination(modalities)
    if scope is Scope.PRIVATE:
        return None
    if scope is Scope.TASK:
        return f"task/{combo}"
    names = {"enc": "enc", "syn": "syn", "fuse": "fuse", "head_r": "head/R", "head_u": "head/U",
             "head_s": "head/S", "late": "late", "comb": "comb"}
    base = names[unit.kind]
    if unit.modality:
        base = f"{base}/{unit.modality}"
    if scope is Scope.COMBINATION:
        # The syn projection of one modality is keyed by modality *and* combination.
        return f"{base}@{combo}" if unit.modality else f"{base}/{combo}"
    return base


def branches_for(row: SharingRow, modalities: tuple[str, ...], arch: str,
                 share_heads: bool, synergy: SynergySetting = "combination") -> dict[str, list[Unit]]:
    """Branch key -> the units it carries, for one agent (private units left out)."""
    out: dict[str, list[Unit]] = {}
    for unit in units_for(modalities, arch):
        key = branch_key(unit, scope_of(row, unit, share_heads, synergy), modalities)
        if key is not None:
            out.setdefault(key, []).append(unit)
    return out
