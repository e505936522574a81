"""`parse-edge agent`: run one agent of a fleet, as on a board."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.cli.options import add_start_options, check_broker_url, networked_strategy
from edge.config.load import load_config
from edge.errors import UserError
from edge.learning.strategies import strategy_names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `agent`."""
    parser = sub.add_parser(
        name, help="run one agent, as on a board",
        description="Run one agent: announce it on the broker, wait for the fleet's quorum (or "
                    "join a fleet under way at its neighbours' round), run the rounds (mix, train, "
                    "evaluate, publish; numbered 0 to rounds-1), write metrics and checkpoints. "
                    "Restarted with the same --out it resumes from its checkpoint; a finished "
                    "agent's folder is refused unless --force. Exit status: 0 done, 2 bad input, "
                    "4 quorum not reached, 5 the broker refused the connection or our publishes, "
                    "130 stopped.")
    parser.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    parser.add_argument("--agent", required=True, metavar="ID", help="this agent's id in CONFIG")
    parser.add_argument("--broker", default=None, metavar="URL",
                        help="mqtt://host:port (default: the config's broker.url)")
    parser.add_argument("--out", default="runs/agent", metavar="DIR",
                        help="writes DIR/agents/<id>/{metrics.jsonl,checkpoint.pt,final.json}")
    parser.add_argument("--strategy", default=None, type=networked_strategy, metavar="NAME",
                        help=f"one of {', '.join(strategy_names(networked=True))}")
    parser.add_argument("--arch", choices=["sliced", "plain"], default=None,
                        help="model architecture (default: the config's model.arch)")
    parser.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    parser.add_argument("--split", default=None, metavar="R,U,S",
                        help="override model.split (a trial passes what split: auto resolved to)")
    parser.add_argument("--synergy-scope", default=None, metavar="SCOPE",
                        help="override model.synergy_scope: combination, modality or "
                             "m=combination|modality,... (a trial passes what auto resolved to)")
    parser.add_argument("--energy", choices=["auto", "measured", "estimated"], default="auto",
                        help="energy source: a power sensor when readable (auto), required "
                             "(measured), or the device profile's estimate (estimated; use it when "
                             "several agents share one host)")
    add_start_options(parser, "give up (exit status 4)")
    parser.add_argument("--force", action="store_true",
                        help="start over in a finished agent's folder (deletes its metrics, "
                             "checkpoint and final.json); without it a finished folder is refused")
    parser.add_argument("--run-id", default=None, metavar="HEX",
                        help="the run this agent belongs to (32 hex digits; the trial runner "
                             "passes it); default: the run announced on the control topic, or a "
                             "new one announced by this agent when it is the first")
    parser.add_argument("--mqtt", choices=list(MQTT_VERSIONS), default="auto",
                        help="MQTT version: 5 when the broker speaks it, else 3.1.1 (auto); "
                             "Mosquitto speaks 5 (refused publishes and its packet limit are "
                             "read), amqtt only 3.1.1")
    parser.add_argument("--quiet", action="store_true", help="no narration (start-up, rounds, events)")
    parser.set_defaults(run=run)


# Exit status of an agent that gave up waiting for the quorum (2 is bad input, 130 Ctrl-C).
QUORUM_EXIT = 4
# Exit status of an agent the broker would not let in, or whose publishes did not reach it.
BROKER_EXIT = 5
# --mqtt choices -> broker.client.MqttClient's protocol argument
MQTT_VERSIONS = {"auto": 0, "3.1.1": 4, "5": 5}


def parse_run_id(text: str | None) -> bytes | None:
    """The --run-id value as 16 bytes (None when not given).

    Raises
    ------
    UserError
        When it is not 32 hex digits.
    """
    if text is None:
        return None
    try:
        run_id = bytes.fromhex(text)
    except ValueError:
        run_id = b""
    if len(run_id) != 16:
        raise UserError(f"--run-id: expected 32 hex digits, got {text[:40]!r}")
    return run_id


def run(args: argparse.Namespace) -> int:
    """Run the agent to its last round."""
    from broker.probe import PublishProbeError
    from broker.refusals import BrokerRefusedError
    from edge.config.overrides import parse_quorum, parse_split, parse_synergy_scope, with_overrides
    from edge.net.agent import run_agent
    from edge.net.quorum import QuorumTimeout

    quorum = parse_quorum(args.quorum) if args.quorum is not None else None
    split = parse_split(args.split) if args.split is not None else None
    synergy = parse_synergy_scope(args.synergy_scope) if args.synergy_scope is not None else None
    cfg = with_overrides(load_config(args.config), rounds=args.rounds, quorum=quorum,
                         start_timeout_s=args.start_timeout, split=split, synergy_scope=synergy)
    run_id = parse_run_id(args.run_id)
    url = args.broker or cfg.broker.url
    if url == "embedded":
        raise UserError("--broker: an agent needs a broker URL (mqtt://host:port); the embedded "
                        "broker is started by `parse-edge trial` or `parse-edge broker run`")
    check_broker_url(url)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        final = run_agent(cfg, args.agent, url, Path(args.out), args.strategy, args.arch,
                          args.energy, progress, force=args.force, run_id=run_id,
                          protocol=MQTT_VERSIONS[args.mqtt])
    except QuorumTimeout as exc:
        print(f"error: {args.agent}: {exc}", file=sys.stderr)
        return QUORUM_EXIT
    except (ConnectionError, PublishProbeError, BrokerRefusedError) as exc:
        print(f"error: {args.agent}: {' '.join(str(exc).split())}", file=sys.stderr)
        return BROKER_EXIT
    missed = final.get("missed_rounds", [])
    print(f"{args.agent}: through round {final['rounds_completed'] - 1}"
          f"{f' ({len(missed)} missed)' if missed else ''}, "
          f"{final['bytes']['sent_total'] / 1e6:.2f} MB sent, {final['energy_j']:.1f} J "
          f"({final['energy_source']})")
    return 0
