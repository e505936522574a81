"""`parse-edge agent`: run one agent of a fleet, as on a board."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.config.load import load_config
from edge.errors import UserError
from edge.learning.strategies import strategy_names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `agent`."""
    parser = sub.add_parser(
        name, help="run one agent, as on a board",
        description="Run one agent: announce it on the broker, find its neighbours, run the rounds "
                    "(mix, train, evaluate, publish), write metrics and checkpoints. Restarted with "
                    "the same --out it resumes from its checkpoint.")
    parser.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    parser.add_argument("--agent", required=True, metavar="ID", help="this agent's id in CONFIG")
    parser.add_argument("--broker", default=None, metavar="URL",
                        help="mqtt://host:port (default: the config's broker.url)")
    parser.add_argument("--out", default="runs/agent", metavar="DIR",
                        help="writes DIR/agents/<id>/{metrics.jsonl,checkpoint.pt,final.json}")
    parser.add_argument("--strategy", default=None,
                        help=f"one of {', '.join(strategy_names(networked=True))}")
    parser.add_argument("--arch", choices=["sliced", "plain"], default=None)
    parser.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    parser.add_argument("--energy", choices=["auto", "measured", "estimated"], default="auto",
                        help="energy source: a power sensor when readable (auto), required "
                             "(measured), or the device profile's estimate (estimated; use it when "
                             "several agents share one host)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the agent to its last round."""
    from edge.config.overrides import with_overrides
    from edge.net.agent import run_agent

    cfg = with_overrides(load_config(args.config), rounds=args.rounds)
    url = args.broker or cfg.broker.url
    if url == "embedded":
        raise UserError("--broker: an agent needs a broker URL (mqtt://host:port); the embedded "
                        "broker is started by `parse-edge trial` or `parse-edge broker run`")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    final = run_agent(cfg, args.agent, url, Path(args.out), args.strategy, args.arch,
                      args.energy, progress)
    print(f"{args.agent}: {final['rounds_completed']} rounds, {final['bytes']['sent_total'] / 1e6:.2f} MB "
          f"sent, {final['energy_j']:.1f} J ({final['energy_source']})")
    return 0
