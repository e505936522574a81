"""User-facing errors: one line, naming the file and field, and what was expected."""

from __future__ import annotations

import sys

# Every character str.splitlines() breaks at: escaped, so one error stays one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class UserError(Exception):
    """Bad input from the user; the CLI prints `error: <message>` and exits with status 2."""

    exit_code = 2


class ConfigError(UserError):
    """A value in a file (config, data, manifest) is not what was expected."""

    def __init__(self, source: str, field: str, expected: str) -> None:
        # One line whatever the parts hold: a library's multi-line message is joined, a line
        # break in a file name or a hostile key is escaped.
        self.source = str(source).translate(_LINE_BREAKS)
        self.field = str(field).translate(_LINE_BREAKS)
        self.expected = " ".join(str(expected).split())
        super().__init__(f"{self.source}: {self.field}: {self.expected}")


# One-line input errors of the lower wings, which may not import edge/: (module, class). A class
# is looked up only when its module is already loaded (it cannot have raised otherwise), so the
# CLI start-up imports none of them (devices.runtime loads onnxruntime).
LOWER_WING_ERRORS = (
    ("exporters.schema", "FieldError"),      # manifest, npz (ManifestError, NpzError)
    ("devices.energy", "EnergyUnavailable"),
    ("devices.estimate", "EnergyTotalsError"),
    ("devices.i2c", "I2cSpecError"),
    ("devices.runtime", "InputError"),
)


def as_user_error(exc: BaseException) -> UserError | None:
    """Return the user error an exception stands for, or None for a bug (it keeps its traceback).

    The one place where loader failures become `error: <file>: <field>: <expected>` and exit
    status 2: edge's own `UserError`s, and the lower wings' one-line errors in
    `LOWER_WING_ERRORS`. The message is kept to one line.
    """
    if isinstance(exc, UserError):
        user = exc
    else:
        lower = tuple(cls for module, name in LOWER_WING_ERRORS
                      if isinstance(cls := getattr(sys.modules.get(module), name, None), type))
        if not lower or not isinstance(exc, lower):
            return None
        user = UserError(str(exc))
    text = str(user)
    if text.translate(_LINE_BREAKS) != text:
        exit_code = user.exit_code
        user = UserError(text.translate(_LINE_BREAKS))
        user.exit_code = exit_code
    return user
