"""Output that survives its reader going away: `parse-edge ... | head -1` ends without a traceback.

Python ignores SIGPIPE, so writing to a pipe whose reader has exited raises `BrokenPipeError` -
from wherever the write happens (a print, rich, the interpreter's final flush). `guarded_output`
wraps stdout and stderr for the duration of a command: the first broken write points the stream's
file descriptor at /dev/null (so nothing buffered can fail later) and every later write is
dropped. The command runs to its end and exits with its own status: a trial whose output nobody
reads still writes its record.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import TextIO, cast


class PipeGuard(io.TextIOBase):
    """A text stream that drops everything, silently, once its reader has gone (EPIPE)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        """Write through, until the first broken pipe."""
        if not self.broken:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._detach()
        return len(text)

    def flush(self) -> None:
        """Flush through, until the first broken pipe."""
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._detach()

    def _detach(self) -> None:
        self.broken = True
        # What is still buffered can never reach the reader; let the final flush hit /dev/null.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal."""
        return not self.broken and self.stream.isatty()

    def fileno(self) -> int:
        """Return the wrapped stream's file descriptor."""
        return self.stream.fileno()

    def writable(self) -> bool:
        """Say yes: writes after a broken pipe are dropped, not refused."""
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The wrapped stream's encoding."""
        return self.stream.encoding


@contextlib.contextmanager
def guarded_output() -> Iterator[None]:
    """Guard sys.stdout and sys.stderr while the block runs (nested use is harmless)."""
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, PipeGuard):
        sys.stdout = cast(TextIO, PipeGuard(sys.stdout))
    if not isinstance(sys.stderr, PipeGuard):
        sys.stderr = cast(TextIO, PipeGuard(sys.stderr))
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved
