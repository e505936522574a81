"""The trial's console: narration lines, plus a live status footer on a terminal.

On a TTY the runner's lines scroll above a live footer drawn by `rich` (start-up phase, round,
agents online, elapsed time); anywhere else (a pipe, a file, a test) the same lines are written
plainly, one per event, and the footer is left out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO


class Console(Protocol):
    """Where the runner's narration goes."""

    def line(self, text: str, style: str = "") -> None:
        """One narration line (`style` is a rich style name such as "bold" or "red")."""

    def status(self, text: str) -> None:
        """Replace the live footer (a terminal only; plain consoles ignore it)."""

    def close(self) -> None:
        """Stop the live view (lines written so far stay)."""


class CallbackConsole:
    """Plain lines handed to a callable (a test, a benchmark, `print`)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def line(self, text: str, style: str = "") -> None:
        """Pass the line on."""
        self.write(text)

    def status(self, text: str) -> None:
        """No footer."""

    def close(self) -> None:
        """Nothing to stop."""


class PlainConsole(CallbackConsole):
    """Plain lines on a stream, flushed one by one (a log file or a pipe sees each at once)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(lambda text: print(text, file=stream, flush=True))


class RichConsole:
    """Lines printed above a live footer (rich.live.Live), refreshed four times a second."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console as RichOutput
        from rich.live import Live
        from rich.text import Text

        self._text = Text
        self.output = RichOutput(file=stream, highlight=False)
        self.live: Any = Live(Text(""), console=self.output, refresh_per_second=4, transient=True)
        self.live.start()

    def line(self, text: str, style: str = "") -> None:
        """Print above the footer (markup off: agent ids and paths are shown as they are)."""
        self.output.print(self._text(text, style=style or ""), soft_wrap=True)

    def status(self, text: str) -> None:
        """Redraw the footer."""
        self.live.update(self._text(text, style="bold cyan"))

    def close(self) -> None:
        """Remove the footer."""
        self.live.stop()


def make_console(stream: TextIO | None = None, plain: bool = False) -> Console:
    """Choose a rich live console when `stream` (default stderr) is a terminal, else plain lines."""
    stream = stream or sys.stderr
    if not plain and stream.isatty():
        try:
            return RichConsole(stream)
        except ImportError:  # rich is a dependency; a stripped install still gets lines
            pass
    return PlainConsole(stream)
