"""Strategies as small objects: which architecture, which branches go to whom, what runs first.

The round loop asks a strategy three things and never looks at its name:
- `arch(requested)`: the model architecture it trains (monolithic plain means one shared space);
- `schedule(rounds, local_epochs)`: how many gossip rounds and local epochs it runs;
- `prepare(learners)`: work before the rounds (centralized pooled training).
What is shared with whom is the strategy's row of the table in edge.sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.errors import UserError
from edge.sharing import TABLE


class Strategy:
    """Decentralized gossip with the sharing table row `name`."""

    # False for references that need every agent's data in one place.
    networked = True

    def __init__(self, name: str) -> None:
        self.name = name

    def arch(self, requested: str) -> str:
        return requested

    def schedule(self, rounds: int, local_epochs: int) -> tuple[int, int]:
        return rounds, local_epochs

    def prepare(self, learners: Sequence[object]) -> None:
        return None


class Parse(Strategy):
    """PARSE needs the fission model: there is no slice to share without slices."""

    def arch(self, requested: str) -> str:
        if requested != "sliced":
            raise UserError("--arch: parse needs the sliced architecture; "
                            "baselines run on both sliced and plain")
        return requested


class Monolithic(Strategy):
    """One embedding space for every modality; on the plain architecture its outputs are summed."""

    def arch(self, requested: str) -> str:
        return "shared" if requested == "plain" else requested


class Centralized(Strategy):
    """All data pooled into one model trained for the whole budget, then one epoch of local
    fine-tuning per agent: a reference point for personalised accuracy, not a DFL method."""

    networked = False

    def schedule(self, rounds: int, local_epochs: int) -> tuple[int, int]:
        self.pooled_epochs = rounds * local_epochs
        return 1, 1

    def prepare(self, learners: Sequence[object]) -> None:
        from edge.centralized import pooled_training

        pooled_training(learners, self.pooled_epochs)


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; a one-line error lists the valid names."""
    classes = {"parse": Parse, "monolithic": Monolithic}
    if name == "centralized":
        return Centralized(name)
    if name not in TABLE:
        raise UserError(f"--strategy: unknown strategy {name!r}; expected one of "
                        f"{', '.join(TABLE)} or all")
    return classes.get(name, Strategy)(name)

