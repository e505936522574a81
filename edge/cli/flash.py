"""`parse-edge flash`: install bundles on boards over SSH, one board or a whole inventory."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import UserError


def add_ssh_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the board(s) are and how to reach them (shared with `status`)."""
    parser.add_argument("--host", metavar="USER@HOST[:PORT]", default=None, help="one board")
    parser.add_argument("--inventory", metavar="FILE", type=Path, default=None,
                        help="boards.yaml: agent id -> host, user, port, identity, prefix")
    parser.add_argument("--identity", metavar="KEY", type=Path, default=None,
                        help="SSH private key (ssh -i)")
    parser.add_argument("--known-hosts", metavar="FILE", type=Path, default=None,
                        help="known_hosts file to check host keys against (default: ssh's own); "
                             "unknown or changed host keys are refused")
    parser.add_argument("--ssh-config", metavar="FILE", type=Path, default=None,
                        help="ssh_config file (default: ~/.ssh/config)")
    parser.add_argument("--prefix", default=None, metavar="DIR",
                        help="install folder on the board (default: /opt/parse-edge)")
    parser.add_argument("--python", default=None, metavar="PATH",
                        help="board interpreter (default: python3)")
    parser.add_argument("--workers", type=int, default=8, help="boards handled at once")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `flash` subcommand."""
    parser = sub.add_parser(
        name, help="install a bundle on a board (or an inventory of boards) over SSH",
        description="Copy a bundle to a board, verify every sha256, install it as a release "
                    "with its own venv, switch `current` atomically and (re)start the agent "
                    "(systemd where it runs, else a supervisor). Re-flashing is a no-op; a failed "
                    "step leaves the previous release current and running. With --inventory, "
                    "BUNDLE is the folder written by `parse-edge bundle --all-agents`.")
    parser.add_argument("bundle", nargs="?", metavar="BUNDLE|DIR", type=Path,
                        help="bundle file, or the bundle folder with --inventory")
    add_ssh_arguments(parser)
    parser.add_argument("--rollback", action="store_true",
                        help="switch back to the previous release (and restart it)")
    parser.add_argument("--no-start", action="store_true",
                        help="install and switch, but do not (re)start the agent")
    parser.add_argument("--health-s", type=float, default=10.0,
                        help="seconds the new agent must stay up before `current` moves")
    parser.set_defaults(run=run)


def ssh_setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Read the SshOptions and the inventory (or the single board) from the command line."""
    from devices.flash import DEFAULT_PREFIX, Board
    from devices.ssh import SshOptions, SshTarget

    if (args.host is None) == (args.inventory is None):
        raise UserError("--host / --inventory: expected exactly one of them")
    if args.workers < 1:
        raise UserError(f"--workers: expected an integer >= 1, got {args.workers}")
    options = SshOptions(identity=args.identity, known_hosts=args.known_hosts,
                         config_file=args.ssh_config)
    if args.inventory is not None:
        for flag in ("prefix", "python"):
            if getattr(args, flag) is not None:
                raise UserError(f"--{flag}: expected it in the inventory (defaults.{flag} or per "
                                "board) when --inventory is given")
        from devices.inventory import InventoryError, load_inventory

        try:
            return options, load_inventory(args.inventory), None
        except InventoryError as exc:
            raise UserError(str(exc)) from None
    try:
        target = SshTarget.parse(args.host)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    board = Board(target.host, target, args.prefix or DEFAULT_PREFIX, args.python or "python3")
    return options, None, board


def run(args: argparse.Namespace) -> int:
    """Flash, roll back, or flash a fleet."""
    from devices.bundle import BundleError
    from devices.flash import FlashError, flash, rollback

    options, inventory, board = ssh_setup(args)
    if args.health_s <= 0:
        raise UserError(f"--health-s: expected seconds > 0, got {args.health_s}")
    start = not args.no_start
    if board is not None:
        try:
            if args.rollback:
                result = rollback(board, options, start=start, health_s=args.health_s)
            else:
                if args.bundle is None or not args.bundle.is_file():
                    raise UserError(f"{args.bundle}: expected a bundle file (parse-edge bundle)")
                result = flash(args.bundle, board, options, start=start, health_s=args.health_s)
        except (FlashError, BundleError) as exc:
            raise UserError(str(exc)) from None
        print(f"{result.board}: {result.action} release {result.release} in "
              f"{result.seconds:.1f} s")
        return 0
    if args.rollback:
        raise UserError("--rollback: expected --host (roll boards back one at a time)")
    if args.bundle is None or not args.bundle.is_dir():
        raise UserError(f"{args.bundle}: expected the folder of `parse-edge bundle --all-agents`")
    from devices.fleet import bundles_for, flash_fleet, outcome_table
    from devices.inventory import InventoryError
    try:
        bundles = bundles_for(inventory, args.bundle)
    except InventoryError as exc:
        raise UserError(str(exc)) from None
    outcomes = flash_fleet(inventory, bundles, options, workers=args.workers, start=start,
                           health_s=args.health_s)
    print(outcome_table(outcomes))
    failed = [o.agent for o in outcomes if not o.ok]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} boards failed: {', '.join(failed)}")
        return 1
    return 0
