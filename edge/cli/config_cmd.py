"""`parse-edge config check FILE`: validate a fleet config and print a one-screen summary."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import TYPE_CHECKING

from edge.config.load import load_config
from edge.config.schema import FleetConfig, quorum_count
from edge.config.topology import build_graph, edge_count
from edge.learning.sharing import branches_for, combination
from edge.learning.strategies import get_strategy

if TYPE_CHECKING:
    from devices.field.spec import FieldSpec


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `config check`."""
    parser = sub.add_parser(name, help="validate a fleet config and summarise it",
                            description="Fleet configuration tools.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    check = actions.add_parser(
        "check", help="validate FILE (and load its data) and print a summary",
        description="Validate a fleet config, load every agent's data partition, and print "
                    "agents by modality set, the topology and the branches each agent holds. "
                    "Given a field file (docs/field.md), validate it, check its boards are the "
                    "agents of the fleet config it names, and check that config.")
    check.add_argument("file", metavar="FILE", help="fleet config or field file (YAML)")
    check.add_argument("--no-data", action="store_true",
                       help="validate the config only; do not load the data set")
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate, optionally load data, print the summary (a field file: it and its fleet)."""
    from edge.trial.field import field_spec_of

    spec = field_spec_of(args.file)  # None: not a field file
    if spec is not None:
        from edge.cli.field import check_fleet

        check_fleet(spec)
        print(field_summary(spec))
    cfg = load_config(spec.fleet_path if spec is not None and spec.fleet_path else args.file)
    sizes: dict[str, tuple[int, int]] = {}
    if not args.no_data:
        from edge.data.fleet_data import agent_data

        sizes = {a: (len(d.train.y), len(d.test.y)) for a, d in agent_data(cfg).items()}
    print(summary(cfg, sizes))
    return 0


def field_summary(spec: FieldSpec) -> str:
    """One line per site of a validated field file: its boards, and the hub."""
    doc = spec.doc
    lines = [f"field {doc.field} ({spec.source}): OK, {len(doc.sites)} site(s), "
             f"{len(spec.board_ids)} boards, subnet {doc.subnet}, fleet {spec.fleet_path}"]
    for name, site in doc.sites.items():
        hub = " (hub)" if name == doc.hub else ""
        lines.append(f"  site {name}{hub}: {', '.join(b.id for b in site.boards)}")
    return "\n".join(lines)


def summary(cfg: FleetConfig, sizes: dict[str, tuple[int, int]]) -> str:
    """Write the one-screen text summary of a validated config."""
    # Imported here: the CLI's start-up stays on the board path (edge.records needs
    # typing_extensions, which an inference-only install does not have).
    from edge.summary import round_span

    d = cfg.data
    part = d.partition
    part_text = f"dirichlet(alpha={part.alpha:g})" if part.kind == "dirichlet" else "iid"
    lines = [
        f"config {cfg.source}: OK",
        f"fleet {cfg.fleet}: {len(cfg.agent_specs)} agents, data {d.dataset} "
        f"[{', '.join(cfg.modalities)}], partition {part_text}, test {part.test_fraction:g}",
        f"strategy {cfg.strategy}, arch {cfg.model.arch}, fusion {cfg.model.fusion}, "
        f"combiner {cfg.model.combiner}, share_heads {str(cfg.model.share_heads).lower()}; "
        f"{cfg.training.rounds} rounds ({round_span(cfg.training.rounds)}) x "
        f"{cfg.training.local_epochs} local epochs; quorum "
        f"{quorum_count(cfg.training, len(cfg.agent_specs))} of {len(cfg.agent_specs)} agents; "
        f"codec {cfg.comm.codec}; broker {cfg.broker.url}",
        "",
        "agents by modality set:",
    ]
    by_kind: dict[str, list[str]] = defaultdict(list)
    for a in cfg.agent_specs:
        by_kind[combination(a.modalities)].append(a.id)
    for kind, ids in by_kind.items():
        lines.append(f"  {kind:<16} {len(ids):>3}  {' '.join(ids)}")
    graph = build_graph(cfg.topology, [a.id for a in cfg.agent_specs], cfg.training.seed)
    resample = ", re-drawn every round" if cfg.topology.resample_each_round else ""
    lines += ["", f"topology {cfg.topology.kind}: {edge_count(graph)} edges{resample}"]
    lines.append("")
    strategy = get_strategy(cfg.strategy)
    lines.append("agent        device            data (train/test)  neighbours -> branches")
    # synergy_scope: auto is decided when the fleet starts (edge.learning.auto_model); until then
    # the keys shown are parse's own (by combination).
    synergy = "combination" if cfg.model.synergy_scope == "auto" else cfg.model.synergy_scope
    for a in cfg.agent_specs:
        keys = branches_for(strategy.sharing, a.modalities, strategy.arch(cfg.model.arch),
                            cfg.model.share_heads, synergy)
        n_train, n_test = sizes.get(a.id, (0, 0))
        data_text = f"{n_train}/{n_test}" if a.id in sizes else "-"
        lines.append(f"  {a.id:<10} {a.device:<17} {data_text:>17}  "
                     f"{','.join(graph[a.id])} -> {' '.join(keys) or '(none shared)'}")
    return "\n".join(lines)
