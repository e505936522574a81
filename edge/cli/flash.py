"""`parse-edge flash`: copy a bundle to a board over SSH (not available yet)"""

from __future__ import annotations

import argparse

from edge.cli.pending import not_available


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `flash` subcommand."""
    help_text = "copy a bundle to a board over SSH (not available yet)"
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments (not available yet)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Not available yet."""
    not_available("flash")
    return 3
