"""User-facing errors: one line, naming the file and field, and what was expected."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the CLI prints `error: <message>` and exits with status 2."""

    exit_code = 2


class ConfigError(UserError):
    """A value in a file (config, data, manifest) is not what was expected."""

    def __init__(self, source: str, field: str, expected: str) -> None:
        self.source = source
        self.field = field
        self.expected = expected
        super().__init__(f"{source}: {field}: {expected}")
