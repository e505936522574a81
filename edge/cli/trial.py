"""`parse-edge trial`: a field trial: a broker and one agent process per agent, with a report."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from edge.cli.options import add_start_options, check_broker_url, networked_strategy
from edge.cli.run_folder import check_out_folder, new_run_folder, point_latest
from edge.config.load import load_config
from edge.errors import UserError
from edge.learning.strategies import strategy_names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `trial`."""
    parser = sub.add_parser(
        name, help="run a field trial: broker plus one process per agent",
        description="Start the broker (embedded by default) and one agent process per agent "
                    "(forked from a fork server that imported torch once; --isolated for fresh "
                    "interpreters), narrate start-up, rounds and events, inject the config's "
                    "faults, and write DIR/metrics.jsonl, DIR/summary.json, DIR/report.md and "
                    "DIR/plots/*.png. Rounds are numbered 0 to rounds-1 everywhere. Without CONFIG "
                    "it runs the built-in basic-motions example (8 agents, rounds 0-11).")
    parser.add_argument("config", metavar="CONFIG", nargs="?", default=None,
                        help="fleet config (YAML), or a field file (FIELD.yaml, docs/field.md: "
                             "root; every agent flashed over SSH onto its board of a virtual "
                             "field); default: the built-in basic-motions example")
    parser.add_argument("--broker", default=None,
                        help="'embedded' or mqtt://host:port (default: the config's broker.url)")
    parser.add_argument("--strategy", default=None, type=networked_strategy, metavar="NAME",
                        help=f"one of {', '.join(strategy_names(networked=True))} (default: the "
                             "config's; centralized is simulation-only)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: a new runs/trial/<UTC time>, with "
                             "runs/trial/latest pointing at it, so no record is ever replaced)")
    parser.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="overall time limit in seconds (default: from rounds x round deadline)")
    parser.add_argument("--max-restarts", type=int, default=2, metavar="N",
                        help="restarts per agent after a kill the runner did not cause "
                             "(default %(default)s)")
    parser.add_argument("--energy", choices=["auto", "measured", "estimated"], default="estimated",
                        help="agents' energy source (default %(default)s: agents sharing this host "
                             "cannot tell their own share of a package-wide power meter apart)")
    add_start_options(parser, "agents give up")
    parser.add_argument("--isolated", action="store_true",
                        help="start every agent as a fresh Python interpreter (each imports torch) "
                             "instead of forking it from the fork server")
    parser.add_argument("--force", action="store_true",
                        help="replace the record of an earlier trial in --out (refused otherwise)")
    parser.add_argument("--plain", action="store_true",
                        help="plain progress lines even on a terminal (no live footer)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.set_defaults(run=run)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Validate, run the trial, print where the record is; the exit status says how it went."""
    from edge.config.overrides import parse_quorum
    from edge.trial.console import make_console
    from edge.trial.field import field_file_fleet
    from edge.trial.runner import TrialOptions, run_trial

    # A field file (docs/field.md) runs its fleet on the field's boards (edge.trial.field).
    fleet_of_field = field_file_fleet(args.config) if args.config is not None else None
    if fleet_of_field is not None and args.broker is not None:
        raise UserError("--broker: a field trial's boards use their site brokers; expected no --broker")
    cfg = load_config(fleet_of_field or args.config)
    if args.broker is not None and args.broker != "embedded":
        check_broker_url(args.broker)
    if args.max_restarts < 0:
        raise UserError(f"--max-restarts: expected an integer >= 0, got {args.max_restarts}")
    if args.energy == "measured":
        # Fail here, in one line, rather than in every agent: the agents share this host's sensors.
        from devices.energy import EnergyMeter

        EnergyMeter(mode="measured").close()
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout: expected seconds > 0, got {args.timeout}")
    if args.out is not None:
        check_out_folder(Path(args.out))
    out = Path(args.out) if args.out is not None else new_run_folder(DEFAULT_ROOT)
    opts = TrialOptions(out=out, config_path=fleet_of_field or args.config, broker=args.broker,
                        strategy=args.strategy, rounds=args.rounds, timeout_s=args.timeout,
                        max_restarts=args.max_restarts, plots=not args.no_plots,
                        energy=args.energy, isolated=args.isolated, force=args.force,
                        quorum=parse_quorum(args.quorum) if args.quorum is not None else None,
                        start_timeout_s=args.start_timeout)
    # SIGTERM to the runner stops the trial like Ctrl-C: every agent is stopped, the record written.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        console = make_console(sys.stderr, plain=args.plain)
        if fleet_of_field is not None:
            from edge.trial.field import run_field_trial

            result = run_field_trial(args.config, opts, console, progress=console.line)
        else:
            result = run_trial(cfg, opts, console=console)
    finally:
        signal.signal(signal.SIGTERM, previous)
    block = result.summary["strategies"][result.summary["trial"]["strategy"]]
    kinds = "  ".join(f"{k} {v:.3f}" for k, v in block["accuracy"]["by_kind"].items())
    print(f"trial {result.status}: accuracy {block['accuracy']['overall']:.3f}  ({kinds})  "
          f"{block['bytes_sent']['total'] / 1e6:.2f} MB sent  in {result.summary['trial']['wall_s']:.1f} s")
    for agent in result.failed_agents:
        print(f"failed agent: {agent} (see {result.out / 'agents' / agent / 'agent.log'})", file=sys.stderr)
    print(f"wrote {result.out / 'report.md'}")
    if args.out is None:
        point_latest(DEFAULT_ROOT, out)
    return result.exit_code


DEFAULT_ROOT = Path("runs/trial")
