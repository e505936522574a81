"""Placeholder behaviour for subcommands whose implementation has not landed yet."""

from __future__ import annotations

from typing import NoReturn

from edge.errors import NotAvailableYet


def not_available(what: str) -> NoReturn:
    """Raise the one-line 'not available yet' error for `what`."""
    raise NotAvailableYet(f"{what}: not available yet in this version of parse-edge")
