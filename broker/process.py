"""Stopping a broker child process: SIGTERM, a grace period, then SIGKILL; pipes closed."""

from __future__ import annotations

import subprocess


def terminate(process: subprocess.Popen[bytes] | subprocess.Popen[str] | None,
              timeout_s: float = 10.0) -> None:
    """Stop `process` if it still runs and release its pipes (None: nothing to do)."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
