"""The strategy registry: one entry per strategy, carrying its sharing row and its properties.

Everything that differs between strategies is data in this table; the round loop, the simulator,
the CLI, config validation and `bench/` ask the registry and never compare strategy names.

The sharing row says, for each model unit kind of `edge.learning.sharing.KINDS`, with which
neighbours the unit is averaged (docs/ARCHITECTURE.md §Method, "Partial alignment"):
``-`` private, ``A`` every holder, ``M`` holders of the unit's modality, ``C`` holders of the same
modality combination, ``T`` the whole model with holders of the identical modality set; a trailing
``?`` shares the cell only with ``model.share_heads: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from edge.errors import UserError
from edge.learning.sharing import KINDS, SharingRow


class Schedule(NamedTuple):
    """What a strategy runs: gossip rounds, local epochs per round, and pooled epochs before them."""

    rounds: int
    local_epochs: int
    pooled_epochs: int = 0


@dataclass(frozen=True)
class Strategy:
    """One row of the registry.

    Attributes
    ----------
    name
        The name used in configs and on the command line.
    sharing
        The sharing row (one cell per unit kind of `KINDS`).
    summary
        One line for `--help` and reports.
    networked
        False for references that need every agent's data in one place (simulate only).
    sliced_only
        True when the strategy has no meaning without the fission (sliced) model.
    plain_arch
        The architecture trained when ``plain`` is requested (``shared``: one embedding space).
    pooled
        True: all data pooled into one model for rounds x local_epochs epochs, then one round of
        one local epoch per agent (the centralized reference).
    """

    name: str
    sharing: SharingRow
    summary: str
    networked: bool = True
    sliced_only: bool = False
    plain_arch: str = "plain"
    pooled: bool = False

    def arch(self, requested: str) -> str:
        """The architecture this strategy trains when `requested` (sliced | plain) is asked for.

        Raises
        ------
        UserError
            When a sliced-only strategy is asked for the plain architecture.
        """
        if requested == "sliced":
            return requested
        if self.sliced_only:
            raise UserError(f"--arch: {self.name} needs the sliced architecture; "
                            "baselines run on both sliced and plain")
        return self.plain_arch

    def schedule(self, rounds: int, local_epochs: int) -> Schedule:
        """The rounds and epochs this strategy runs for a `training` section's budget."""
        if self.pooled:
            return Schedule(1, 1, pooled_epochs=rounds * local_epochs)
        return Schedule(rounds, local_epochs)


_REGISTRY = (
    #         name             enc  syn  fuse head_r head_u head_s late comb
    Strategy("parse",         ("M", "C", "C", "A?", "M?", "C?", "-", "-"),
             "PARSE: encoders by modality, synergy and fusion by combination", sliced_only=True),
    Strategy("local",         ("-", "-", "-", "-", "-", "-", "-", "-"),
             "no sharing"),
    Strategy("dsgd-task",     ("T", "T", "T", "T", "T", "T", "T", "T"),
             "the whole model with neighbours holding the identical modality set"),
    Strategy("dsgd-modality", ("M", "M", "-", "A?", "M?", "C?", "C?", "-"),
             "each modality encoder with neighbours holding that modality"),
    Strategy("dsgd-hybrid",   ("M", "M", "C", "A?", "M?", "C?", "C", "-"),
             "modality encoders by modality, fusion by combination"),
    Strategy("monolithic",    ("M", "M", "C", "A", "M", "C", "A", "-"),
             "one shared embedding, every parameter averaged with every holder",
             plain_arch="shared"),
    Strategy("centralized",   ("-", "-", "-", "-", "-", "-", "-", "-"),
             "all data pooled into one model, then one local epoch per agent (reference)",
             networked=False, pooled=True),
)
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _REGISTRY}
assert all(len(s.sharing) == len(KINDS) for s in _REGISTRY), "a sharing row per unit kind"


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`.

    Raises
    ------
    UserError
        For an unknown name; the message lists the valid ones.
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UserError(f"--strategy: unknown strategy {name!r}; expected one of "
                        f"{', '.join(STRATEGIES)} or all") from None


def networked_strategy(name: str) -> Strategy:
    """The strategy called `name`, which must run over a network (trial, agent).

    Raises
    ------
    UserError
        For an unknown name, or a reference that pools every agent's data.
    """
    strategy = get_strategy(name)
    if not strategy.networked:
        raise UserError(f"--strategy: {name} pools every agent's data and is not a networked "
                        "strategy; run it with `parse-edge simulate`")
    return strategy


def strategy_names(*, networked: bool | None = None, arch: str | None = None) -> list[str]:
    """Names in registry order, optionally only the networked ones and/or those that run on
    `arch` (sliced | plain).
    """
    return [s.name for s in _REGISTRY
            if (networked is None or s.networked == networked)
            and (arch is None or arch == "sliced" or not s.sliced_only)]
