"""Command-line overrides of a loaded config, checked once.

`--rounds`, `--seed`, `--strategy`, `--quorum` and `--start-timeout`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from edge.config.schema import FleetConfig, Quorum
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


def with_overrides(cfg: FleetConfig, *, rounds: int | None = None, seed: int | None = None,
                   strategy: str | None = None, quorum: Quorum | None = None,
                   start_timeout_s: float | None = None) -> FleetConfig:
    """Return the config with the given overrides applied (None leaves a value as configured).

    A new seed also re-draws the partition.

    Raises
    ------
    UserError
        For a round count below one or one that a configured fault does not fit in, an unknown
        strategy, a quorum count outside [1, agents], or a start timeout that is not > 0.
    """
    training = cfg.training
    if rounds is not None:
        if rounds < 1:
            raise UserError(f"--rounds: expected an integer >= 1, got {rounds}")
        for i, f in enumerate(cfg.faults):
            last = max(f.round, f.return_round or 0) if f.kind in ("leave", "broker-restart") else 0
            if last >= rounds:
                raise UserError(f"--rounds {rounds}: faults[{i}] ({f.kind}) needs round {last}; "
                                f"expected more rounds than that")
        training = replace(training, rounds=rounds)
    if seed is not None:
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
    if strategy is not None:
        cfg = replace(cfg, strategy=get_strategy(strategy).name)
    return cfg
