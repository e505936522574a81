"""Totals of per-process running counters that restart from zero when the process restarts."""

from __future__ import annotations

from collections.abc import Iterable


def cumulative_total(values: Iterable[float]) -> float:
    """Total of a per-process cumulative counter read once per round: a drop means the process
    restarted and counted from zero again, so each run's last value is added up."""
    total, last = 0.0, 0.0
    for value in values:
        if value < last:
            total += last
        last = value
    return total + last
