"""Command-line overrides of a loaded config (`--rounds`, `--seed`, `--strategy`), checked once."""

from __future__ import annotations

from dataclasses import replace

from edge.config.schema import FleetConfig
from edge.errors import UserError
from edge.learning.strategies import get_strategy


def with_overrides(cfg: FleetConfig, *, rounds: int | None = None, seed: int | None = None,
                   strategy: str | None = None) -> FleetConfig:
    """The config with the given overrides applied (None leaves a value as configured).

    A new seed also re-draws the partition. Raises `UserError` for a round count below one or
    one that a configured fault does not fit in, and for an unknown strategy.
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
    cfg = replace(cfg, training=training)
    if strategy is not None:
        cfg = replace(cfg, strategy=get_strategy(strategy).name)
    return cfg
