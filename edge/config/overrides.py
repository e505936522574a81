"""Command-line overrides of a loaded config, checked once.

`--rounds`, `--seed`, `--strategy`, `--quorum` and `--start-timeout`; `--split` and
`--synergy-scope` carry what `model: {split: auto, synergy_scope: auto}` resolved to (a trial
passes them to its agents: edge.learning.auto_model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import cast

from edge.config.schema import MAX_ROUNDS, MAX_SEED, FleetConfig, Quorum, ScopeName
from edge.errors import UserError
from edge.learning.strategies import get_strategy


def parse_quorum(text: str) -> Quorum:
    """Parse a `--quorum` value: "all", a count ("6") or a fraction ("0.75").

    Raises
    ------
    UserError
        For anything else (the count's range is checked against the fleet by `with_overrides`).
    """
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"--quorum: expected 'all', a count of agents or a fraction in (0, 1], got {text!r}")
    return value


def parse_split(text: str) -> tuple[float, float, float]:
    """Parse a `--split` value: three positive numbers "R,U,S" (slice widths or a ratio).

    Raises
    ------
    UserError
        For anything else.
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--split: expected three positive numbers R,U,S, got {text!r}")
    return values[0], values[1], values[2]


def format_split(split: tuple[float, ...]) -> str:
    """Write a split for `--split` (inverse of `parse_split`)."""
    return ",".join(f"{v:g}" for v in split)


def parse_synergy_scope(text: str) -> ScopeName | dict[str, ScopeName]:
    """Parse `--synergy-scope`: "combination", "modality" or "m=combination,n=modality,...".

    Raises
    ------
    UserError
        For anything else.
    """
    if text in ("combination", "modality"):
        return cast(ScopeName, text)
    out: dict[str, ScopeName] = {}
    for item in text.split(","):
        name, _, scope = item.partition("=")
        if not name or scope not in ("combination", "modality") or name in out:
            raise UserError(f"--synergy-scope: expected combination, modality or "
                            f"m=combination|modality,..., got {text!r}")
        out[name] = cast(ScopeName, scope)
    return out


def format_synergy_scope(scope: str | Mapping[str, str]) -> str:
    """Write a resolved synergy scope for `--synergy-scope` (inverse of `parse_synergy_scope`)."""
    return scope if isinstance(scope, str) else ",".join(f"{m}={s}" for m, s in scope.items())


def with_overrides(cfg: FleetConfig, *, rounds: int | None = None, seed: int | None = None,
                   strategy: str | None = None, quorum: Quorum | None = None,
                   start_timeout_s: float | None = None, split: tuple[float, ...] | None = None,
                   synergy_scope: ScopeName | dict[str, ScopeName] | None = None) -> FleetConfig:
    """Return the config with the given overrides applied (None leaves a value as configured).

    A new seed also re-draws the partition.

    Raises
    ------
    UserError
        For a round count outside [1, MAX_ROUNDS] or one that a configured fault does not fit
        in, a seed outside [0, MAX_SEED], an unknown strategy, a quorum count outside
        [1, agents], a start timeout that is not > 0, a split that leaves a slice empty, or a
        synergy scope naming a modality the fleet lacks.
    """
    training = cfg.training
    if rounds is not None:
        if not 1 <= rounds <= MAX_ROUNDS:  # the config's own range (training.rounds)
            raise UserError(f"--rounds: expected an integer from 1 to {MAX_ROUNDS}, got {rounds}")
        for i, f in enumerate(cfg.faults):
            last = max(f.round, f.return_round or 0) if f.kind in ("leave", "broker-restart") else 0
            if last >= rounds:
                raise UserError(f"--rounds {rounds}: faults[{i}] ({f.kind}) needs round {last}; "
                                f"expected more rounds than that")
        training = replace(training, rounds=rounds)
    if seed is not None:
        if not 0 <= seed <= MAX_SEED:  # numpy's seed range, as training.seed
            raise UserError(f"--seed: expected an integer from 0 to {MAX_SEED}, got {seed}")
        training = replace(training, seed=seed)
    if quorum is not None:
        n = len(cfg.agent_specs)
        if isinstance(quorum, int) and not 1 <= quorum <= n:
            raise UserError(f"--quorum: expected a count of agents in [1, {n}], got {quorum}")
        training = replace(training, quorum=quorum)
    if start_timeout_s is not None:
        if not (math.isfinite(start_timeout_s) and start_timeout_s > 0):
            raise UserError(f"--start-timeout: expected seconds > 0, got {start_timeout_s}")
        training = replace(training, start_timeout_s=start_timeout_s)
    cfg = replace(cfg, training=training)
    if split is not None:
        for name, fam in cfg.families.items():
            if min(fam.latent * s / sum(split) for s in split) < 0.5:
                raise UserError(f"--split {format_split(split)}: leaves a slice of latent "
                                f"{fam.latent} ({name}) with zero width")
        cfg = replace(cfg, model=replace(cfg.model, split=split))
    if synergy_scope is not None:
        unknown = [m for m in synergy_scope if m not in cfg.modalities] if isinstance(
            synergy_scope, dict) else []
        if unknown:
            raise UserError(f"--synergy-scope: unknown modality {unknown[0]!r}; expected some of "
                            f"{', '.join(cfg.modalities)}")
        cfg = replace(cfg, model=replace(cfg.model, synergy_scope=synergy_scope))
    if strategy is not None:
        cfg = replace(cfg, strategy=get_strategy(strategy).name)
    return cfg
