"""Who shares what: model units, the per-strategy sharing table, branch keys, Metropolis weights."""

from __future__ import annotations

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

    kind: str            # enc, syn, fuse, head_r, head_u, head_s, head, comb
    modality: str = ""   # for enc, syn, head_u


# Units of the sliced (fission) architecture and of the plain late-fusion one.
SLICED_KINDS = ("enc", "syn", "fuse", "head_r", "head_u", "head_s", "comb")
PLAIN_KINDS = ("enc", "head", "comb")

P, A, M, C, T = Scope.PRIVATE, Scope.ALL, Scope.MODALITY, Scope.COMBINATION, Scope.TASK
# The table of DESIGN.md §1. Head scopes here apply when heads are shared at all; whether they
# are is HEADS_SHARED below (always, never, or only with `share_heads: true`).
SCOPES: dict[str, dict[str, Scope]] = {
    "parse":         {"enc": M, "syn": C, "fuse": C, "head_r": A, "head_u": M, "head_s": C,
                      "head": C, "comb": P},
    "local":         dict.fromkeys(SLICED_KINDS + PLAIN_KINDS, P),
    "dsgd-task":     dict.fromkeys(SLICED_KINDS + PLAIN_KINDS, T),
    "dsgd-modality": {"enc": M, "syn": M, "fuse": P, "head_r": A, "head_u": M, "head_s": C,
                      "head": C, "comb": P},
    "dsgd-hybrid":   {"enc": M, "syn": M, "fuse": C, "head_r": A, "head_u": M, "head_s": C,
                      "head": C, "comb": P},
    "monolithic":    {"enc": M, "syn": M, "fuse": C, "head_r": A, "head_u": M, "head_s": C,
                      "head": A, "comb": P},
    # Pooled training happens before the rounds; afterwards each agent fine-tunes alone.
    "centralized":   dict.fromkeys(SLICED_KINDS + PLAIN_KINDS, P),
}
HEAD_KINDS = ("head_r", "head_u", "head_s", "head")
# None: heads follow `share_heads`; True/False: the strategy decides regardless.
HEADS_SHARED: dict[str, bool | None] = {
    "parse": None, "local": False, "dsgd-task": True, "dsgd-modality": None,
    "dsgd-hybrid": None, "monolithic": True, "centralized": False,
}


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
        units.append(Unit("head"))
    return units


def scope_of(strategy: str, unit: Unit, share_heads: bool) -> Scope:
    """How widely `strategy` shares `unit`."""
    scope = SCOPES[strategy][unit.kind]
    if unit.kind in HEAD_KINDS:
        shared = HEADS_SHARED[strategy]
        if not (share_heads if shared is None else shared):
            return Scope.PRIVATE
    return scope


def branch_key(unit: Unit, scope: Scope, modalities: tuple[str, ...]) -> str | None:
    """The branch a unit travels in; agents average a branch with neighbours holding the same key.

    None means the unit stays private."""
    combo = combination(modalities)
    if scope is Scope.PRIVATE:
        return None
    if scope is Scope.TASK:
        return f"task/{combo}"
    names = {"enc": "enc", "syn": "syn", "fuse": "fuse", "head_r": "head/R", "head_u": "head/U",
             "head_s": "head/S", "head": "head", "comb": "comb"}
    base = names[unit.kind]
    if unit.modality:
        base = f"{base}/{unit.modality}"
    if scope is Scope.COMBINATION:
        # The syn projection of one modality is keyed by modality *and* combination.
        return f"{base}@{combo}" if unit.modality else f"{base}/{combo}"
    return base


def branches_for(strategy: str, modalities: tuple[str, ...], arch: str,
                 share_heads: bool) -> dict[str, list[Unit]]:
    """Branch key -> the units it carries, for one agent (private units left out)."""
    out: dict[str, list[Unit]] = {}
    for unit in units_for(modalities, arch):
        key = branch_key(unit, scope_of(strategy, unit, share_heads), modalities)
        if key is not None:
            out.setdefault(key, []).append(unit)
    return out


def metropolis_weights(agent: str, holders: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Metropolis-Hastings mixing weights of `agent` on one branch's subgraph.

    `holders` maps every agent of the subgraph to its neighbours *within* the subgraph (agents
    holding the branch with the same signature). w_ij = 1/(1+max(d_i, d_j)); self gets the rest,
    so each row sums to one and the matrix is symmetric, hence doubly stochastic."""
    nbrs = holders[agent]
    weights = {j: 1.0 / (1.0 + max(len(nbrs), len(holders[j]))) for j in nbrs}
    weights[agent] = 1.0 - sum(weights.values())
    return weights


def subgraph(graph: dict[str, tuple[str, ...]], holds: dict[str, set[str]],
             key_sig: str) -> dict[str, tuple[str, ...]]:
    """Restrict `graph` to the agents whose branch set `holds[agent]` contains `key_sig`."""
    members = {a for a, keys in holds.items() if key_sig in keys}
    return {a: tuple(n for n in graph[a] if n in members) for a in graph if a in members}
