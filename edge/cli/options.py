"""Command-line options shared by several subcommands (one wording, one default)."""

from __future__ import annotations

import argparse


def add_start_options(parser: argparse.ArgumentParser, who_gives_up: str) -> None:
    """Add `--quorum Q` and `--start-timeout S` (edge.net.quorum), defaulting to the config.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser (`agent`, `trial`).
    who_gives_up : str
        How the help names what happens at the timeout, e.g. "agents give up".
    """
    parser.add_argument("--quorum", default=None, metavar="Q",
                        help="agents online before round 0: 'all', a count or a fraction "
                             "(default: the config's training.quorum)")
    parser.add_argument("--start-timeout", type=float, default=None, metavar="S",
                        help=f"{who_gives_up} when the quorum is not reached within S seconds "
                             "(default: the config's training.start_timeout_s)")


def networked_strategy(name: str) -> str:
    """Check `--strategy` of `agent` and `trial` (an argparse type): a strategy agents can run.

    Raises
    ------
    argparse.ArgumentTypeError
        For an unknown name, or `centralized`, which trains one model on pooled data and so
        exists only in `parse-edge simulate`.
    """
    from edge.learning.strategies import STRATEGIES, strategy_names

    strategy = STRATEGIES.get(name)
    if strategy is not None and not strategy.networked:
        raise argparse.ArgumentTypeError(
            f"{name!r} trains one model on pooled data, so it runs only in simulation "
            f"(parse-edge simulate --strategy {name}); agents run one of "
            f"{', '.join(strategy_names(networked=True))}")
    if strategy is None:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(strategy_names(networked=True))}, got {name!r}")
    return name


def check_broker_url(url: str) -> str:
    """Check a `--broker` URL (mqtt:// or mqtts://, a host, a port) and return it.

    Raises
    ------
    edge.errors.UserError
        One line naming `--broker` and what was expected.
    """
    from broker.address import parse_broker_url
    from edge.errors import UserError

    try:
        parse_broker_url(url)
    except ValueError as exc:
        raise UserError(f"--broker: {exc}") from None
    return url
