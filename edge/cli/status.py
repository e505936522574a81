"""`parse-edge status`: which release runs on each board, and its last metrics line."""

from __future__ import annotations

import argparse
import json

from edge.errors import UserError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `status` subcommand."""
    from edge.cli.flash import add_ssh_arguments

    parser = sub.add_parser(
        name, help="per board: current release, whether the agent runs, last metrics",
        description="Ask every board (over SSH) for its current release, whether its agent runs "
                    "(supervisor pid or systemd unit) and the agent's last metrics line.")
    add_ssh_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); exit 1 if a board could not be asked."""
    from devices.flash import FlashError, board_status
    from edge.cli.flash import ssh_setup

    options, inventory, board = ssh_setup(args)
    if board is not None:
        try:
            rows = [{"agent": board.name, "host": str(board.target),
                     **board_status(board, options)}]
        except FlashError as exc:
            raise UserError(str(exc)) from None
    else:
        from devices.fleet import status_fleet

        rows = status_fleet(inventory, options, workers=args.workers)
    from devices.fleet import status_table

    print(json.dumps(rows, indent=2) if args.json else status_table(rows))
    return 1 if any("error" in r for r in rows) else 0
