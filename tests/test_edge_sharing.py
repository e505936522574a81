"""The sharing table: branches per agent kind, who shares what with whom, Metropolis weights."""

from __future__ import annotations

import itertools
import random

import pytest

from edge.learning.gossip import metropolis_weights, mixing_plan
from edge.learning.sharing import KINDS, branches_for
from edge.learning.strategies import STRATEGIES, get_strategy

# A hand-made fleet: x holds a, y holds b, z and w hold both. Edges x-z, y-z, z-w, x-y.
MODS = {"x": ("a",), "y": ("b",), "z": ("a", "b"), "w": ("a", "b")}
GRAPH = {"x": ("y", "z"), "y": ("x", "z"), "z": ("w", "x", "y"), "w": ("z",)}
EDGES = [("x", "z"), ("y", "z"), ("z", "w"), ("x", "y")]

ENC_AB = {"enc/a", "enc/b"}
PARSE_ZW = ENC_AB | {"syn/a@a+b", "syn/b@a+b", "fuse/a+b"}
HEADS_XZ = {"head/R", "head/U/a"}
HEADS_YZ = {"head/R", "head/U/b"}
HEADS_ZW = {"head/R", "head/U/a", "head/U/b", "head/S/a+b"}
NONE: dict[tuple[str, str], set[str]] = {e: set() for e in EDGES}


def _edges(xz: set[str], yz: set[str], zw: set[str], xy: set[str]) -> dict[tuple[str, str], set[str]]:
    return {("x", "z"): xz, ("y", "z"): yz, ("z", "w"): zw, ("x", "y"): xy}


# (strategy, arch, share_heads) -> branches travelling on each edge of the hand-made graph.
EXPECTED = {
    ("parse", "sliced", False): _edges({"enc/a"}, {"enc/b"}, PARSE_ZW, set()),
    ("parse", "sliced", True): _edges({"enc/a"} | HEADS_XZ, {"enc/b"} | HEADS_YZ,
                                      PARSE_ZW | HEADS_ZW, {"head/R"}),
    ("local", "sliced", False): NONE,
    ("local", "sliced", True): NONE,
    ("dsgd-task", "sliced", False): _edges(set(), set(), {"task/a+b"}, set()),
    ("dsgd-task", "sliced", True): _edges(set(), set(), {"task/a+b"}, set()),
    ("dsgd-modality", "sliced", False): _edges({"enc/a"}, {"enc/b"},
                                               ENC_AB | {"syn/a", "syn/b"}, set()),
    ("dsgd-modality", "sliced", True): _edges({"enc/a"} | HEADS_XZ, {"enc/b"} | HEADS_YZ,
                                              ENC_AB | {"syn/a", "syn/b"} | HEADS_ZW, {"head/R"}),
    ("dsgd-hybrid", "sliced", False): _edges({"enc/a"}, {"enc/b"},
                                             ENC_AB | {"syn/a", "syn/b", "fuse/a+b"}, set()),
    ("dsgd-hybrid", "sliced", True): _edges(
        {"enc/a"} | HEADS_XZ, {"enc/b"} | HEADS_YZ,
        ENC_AB | {"syn/a", "syn/b", "fuse/a+b"} | HEADS_ZW, {"head/R"}),
    ("monolithic", "sliced", False): _edges(
        {"enc/a"} | HEADS_XZ, {"enc/b"} | HEADS_YZ,
        ENC_AB | {"syn/a", "syn/b", "fuse/a+b"} | HEADS_ZW, {"head/R"}),
    ("centralized", "sliced", False): NONE,
    ("local", "plain", False): NONE,
    ("dsgd-task", "plain", True): _edges(set(), set(), {"task/a+b"}, set()),
    ("dsgd-modality", "plain", False): _edges({"enc/a"}, {"enc/b"}, ENC_AB, set()),
    ("dsgd-modality", "plain", True): _edges({"enc/a"}, {"enc/b"}, ENC_AB | {"late/a+b"}, set()),
    ("dsgd-hybrid", "plain", False): _edges({"enc/a"}, {"enc/b"}, ENC_AB | {"late/a+b"}, set()),
    ("monolithic", "plain", False): _edges({"enc/a", "late"}, {"enc/b", "late"},
                                           ENC_AB | {"late"}, {"late"}),
}
EXPECTED[("monolithic", "sliced", True)] = EXPECTED[("monolithic", "sliced", False)]
EXPECTED[("centralized", "sliced", True)] = NONE


def _holdings(strategy: str, arch: str, share_heads: bool) -> dict[str, dict[str, str]]:
    # Signatures stand in for parameter shapes: the same key on two kinds means the same shapes,
    # except the late head of a plain model, whose input width depends on the modality set.
    out = {}
    for agent, mods in MODS.items():
        keys = branches_for(get_strategy(strategy).sharing, mods, arch, share_heads)
        out[agent] = {k: (f"{k}:{'+'.join(mods)}" if k.startswith("late/") else k) for k in keys}
    return out


@pytest.mark.parametrize(("strategy", "arch", "share_heads"), sorted(EXPECTED))
def test_which_branch_goes_to_which_neighbour(strategy: str, arch: str, share_heads: bool) -> None:
    # Prepare
    holdings = _holdings(strategy, arch, share_heads)
    # Execute
    plans = {a: mixing_plan(a, GRAPH, holdings) for a in MODS}
    # Assert: a branch travels i->j exactly when j is in i's plan for it (and back).
    for i, j in EDGES:
        to_j = {k for k, w in plans[i].items() if j in w}
        to_i = {k for k, w in plans[j].items() if i in w}
        assert to_j == to_i == EXPECTED[(strategy, arch, share_heads)][(i, j)], (i, j)


def test_every_strategy_has_a_table_row_and_table_covers_all_kinds() -> None:
    # Assert
    assert set(STRATEGIES) == {"parse", "local", "dsgd-task", "dsgd-modality", "dsgd-hybrid",
                               "monolithic", "centralized"}
    assert all(len(s.sharing) == len(KINDS) for s in STRATEGIES.values())


@pytest.mark.parametrize(("mods", "expected"), [
    (("a",), {"enc/a"}),
    (("b",), {"enc/b"}),
    (("a", "b"), {"enc/a", "enc/b", "syn/a@a+b", "syn/b@a+b", "fuse/a+b"}),
])
def test_branches_each_agent_kind_holds_under_parse(mods: tuple[str, ...], expected: set[str]) -> None:
    # Execute
    held = branches_for(get_strategy("parse").sharing, mods, "sliced", share_heads=False)
    # Assert
    assert set(held) == expected


def test_syn_branch_of_a_pair_is_not_the_syn_branch_of_a_triple() -> None:
    # Execute
    pair = branches_for(get_strategy("parse").sharing, ("a", "b"), "sliced", False)
    triple = branches_for(get_strategy("parse").sharing, ("a", "b", "c"), "sliced", False)
    # Assert: same modality, other combination -> another branch (no averaging across them)
    assert "syn/a@a+b" in pair and "syn/a@a+b+c" in triple and "syn/a@a+b" not in triple
    assert "enc/a" in pair and "enc/a" in triple


def _random_graph(n: int, p: float, rng: random.Random) -> dict[str, tuple[str, ...]]:
    ids = [f"n{i}" for i in range(n)]
    adj: dict[str, set[str]] = {a: set() for a in ids}
    for a, b in itertools.combinations(ids, 2):
        if rng.random() < p:
            adj[a].add(b)
            adj[b].add(a)
    return {a: tuple(sorted(v)) for a, v in adj.items()}


@pytest.mark.parametrize("seed", range(20))
def test_metropolis_weights_are_doubly_stochastic_on_every_branch_subgraph(seed: int) -> None:
    # Prepare: a random graph whose agents hold random subsets of three branches
    rng = random.Random(seed)
    graph = _random_graph(rng.randint(3, 14), rng.uniform(0.2, 0.8), rng)
    holdings = {a: {k: "sig" for k in ("b1", "b2", "b3") if rng.random() < 0.7} for a in graph}
    # Execute
    plans = {a: mixing_plan(a, graph, holdings) for a in graph}
    # Assert: on each branch, W is symmetric, non-negative, and rows (hence columns) sum to 1
    for key in ("b1", "b2", "b3"):
        members = [a for a in graph if key in plans[a]]
        for i in members:
            row = plans[i][key]
            assert abs(sum(row.values()) - 1.0) < 1e-12
            assert all(w >= 0 for w in row.values())
            for j, w in row.items():
                if j != i:
                    assert j in members and abs(plans[j][key][i] - w) < 1e-12
                    assert key in holdings[j]
        for j in members:
            column = sum(plans[i][key].get(j, 0.0) for i in members)
            assert abs(column - 1.0) < 1e-12


def test_metropolis_weight_uses_degrees_in_the_subgraph() -> None:
    # Prepare: a star centred on c; in the subgraph of c's branch, c has degree 3, leaves 1.
    sub = {"c": ("l1", "l2", "l3"), "l1": ("c",), "l2": ("c",), "l3": ("c",)}
    # Execute
    w_c = metropolis_weights("c", sub)
    w_l = metropolis_weights("l1", sub)
    # Assert
    assert w_c == {"l1": 0.25, "l2": 0.25, "l3": 0.25, "c": 0.25}
    assert w_l == {"c": 0.25, "l1": 0.75}
