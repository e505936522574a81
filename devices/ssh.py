"""SSH to boards with the OpenSSH client in a subprocess.

Why the OpenSSH client rather than a Python SSH library: it is on every laptop and board already,
it reads the user's own ``~/.ssh/config`` (ProxyJump, per-host users and keys), agent and
``known_hosts`` exactly as ``ssh`` on the command line does, and its host-key checking is the
reference behaviour; connection multiplexing (ControlMaster) makes the several steps of a flash
share one TCP/SSH handshake. Host keys are always checked strictly (``StrictHostKeyChecking=yes``,
``BatchMode=yes``): an unknown or changed key is refused with one line, never accepted silently.
"""

from __future__ import annotations

import contextlib
import enum
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TARGET = re.compile(r"(?:(?P<user>[A-Za-z0-9._-]{1,64})@)?(?P<host>\[[0-9A-Fa-f:.]+\]|"
                    r"[A-Za-z0-9._-]{1,253})(?::(?P<port>\d{1,5}))?")


class SshFailure(enum.Enum):
    """Why an SSH command did not run on the board."""

    UNREACHABLE = "unreachable"
    KEY_REFUSED = "key refused"
    HOST_KEY = "host key mismatch"
    OTHER = "ssh failed"


class SshError(Exception):
    """The board could not be reached or refused us; one line saying what was expected."""

    def __init__(self, kind: SshFailure, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class SshTarget:
    """``user@host[:port]`` of one board."""

    host: str
    user: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> SshTarget:
        """Parse ``[user@]host[:port]`` (IPv6 hosts in brackets).

        Raises
        ------
        ValueError
            With the expected form when `text` does not match.
        """
        match = TARGET.fullmatch(text.strip())
        port = int(match["port"]) if match and match["port"] else 22
        if not match or not 1 <= port <= 65535:
            raise ValueError(f"--host {text!r}: expected user@host[:port] with port 1..65535")
        return cls(match["host"].strip("[]"), match["user"], port)

    def __str__(self) -> str:
        """Format as ``user@host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"


@dataclass(frozen=True)
class SshOptions:
    """How to reach boards: key, known_hosts file, ssh_config, timeouts."""

    identity: Path | None = None
    known_hosts: Path | None = None  # default: the user's ~/.ssh/known_hosts
    config_file: Path | None = None  # default: the user's ~/.ssh/config
    connect_timeout_s: float = 10.0
    executable: str = "ssh"

    def argv(self, target: SshTarget, control_path: Path | None) -> list[str]:
        """Build the ssh command line up to (not including) the remote command."""
        args = [self.executable, "-p", str(target.port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
                "-o", f"ConnectTimeout={max(1, round(self.connect_timeout_s))}",
                "-o", "ServerAliveInterval=15", "-o", "LogLevel=ERROR"]
        if self.config_file is not None:
            args += ["-F", str(self.config_file)]
        if self.identity is not None:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}",
                     "-o", "GlobalKnownHostsFile=/dev/null"]
        if control_path is not None:
            args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}",
                     "-o", "ControlPersist=60"]
        if target.user:
            args += ["-l", target.user]
        return [*args, target.host]


def classify(stderr: str, target: SshTarget, options: SshOptions) -> SshError:
    """Turn ssh's exit status 255 and its stderr into one line naming what was expected."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no output"
    known = options.known_hosts or "~/.ssh/known_hosts"
    if "IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        return SshError(SshFailure.HOST_KEY,
                        f"host key of {target.host}:{target.port} is not the one in {known}: "
                        "expected the board's known key (refused; check the board, then "
                        "update known_hosts)")
    if "Permission denied" in text or "Too many authentication failures" in text:
        who = options.identity or "your SSH keys"
        return SshError(SshFailure.KEY_REFUSED,
                        f"{target}: key refused: expected {who} in the board user's "
                        "authorized_keys")
    reasons = ("Connection refused", "timed out", "No route to host", "Could not resolve",
               "Network is unreachable", "Connection reset", "Connection closed")
    if any(r in text for r in reasons):
        return SshError(SshFailure.UNREACHABLE,
                        f"{target}: unreachable ({last.split(': ')[-1]}): expected sshd "
                        "listening there")
    return SshError(SshFailure.OTHER, f"{target}: ssh failed: {last}")


class SshSession:
    """Commands on one board over a shared (multiplexed) SSH connection; a context manager."""

    def __init__(self, target: SshTarget, options: SshOptions) -> None:
        self.target = target
        self.options = options
        self._dir: str | None = None

    def __enter__(self) -> SshSession:
        """Prepare the private folder of the connection-sharing socket."""
        # Unix socket paths are limited to ~104 bytes: a short private folder, %C is a hash.
        self._dir = tempfile.mkdtemp(prefix="pe-ssh-")
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the shared connection and remove its folder."""
        if self._dir is None:
            return
        control = Path(self._dir) / "%C"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([*self.options.argv(self.target, control)[:-1], "-O", "exit",
                            self.target.host], capture_output=True, timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def _argv(self, remote: Sequence[str]) -> list[str]:
        control = Path(self._dir) / "%C" if self._dir else None
        return [*self.options.argv(self.target, control), "--", shlex.join(remote)]

    @contextlib.contextmanager
    def popen(self, remote: Sequence[str], stdin: IO[bytes] | int | None = None
              ) -> Iterator[subprocess.Popen[bytes]]:
        """Start `remote` (argument words, quoted here) on the board; stdout/stderr piped."""
        proc = subprocess.Popen(self._argv(remote), stdin=stdin if stdin is not None else
                                subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def run(self, remote: Sequence[str], stdin: bytes | IO[bytes] | None = None,
            timeout_s: float | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run `remote` to completion.

        Raises
        ------
        SshError
            When ssh itself failed (exit status 255): unreachable, key or host key refused.
        """
        kwargs: dict[str, object] = ({"input": stdin} if isinstance(stdin, bytes) else
                                     {"stdin": stdin if stdin is not None else subprocess.DEVNULL})
        proc = subprocess.run(self._argv(remote), capture_output=True, timeout=timeout_s,
                              **kwargs)  # type: ignore[call-overload]
        if proc.returncode == 255:
            raise classify(proc.stderr.decode(errors="replace"), self.target, self.options)
        return proc  # type: ignore[no-any-return]
