"""Throw-away SSH keys of a field: the operator's login key, one host key per board.

Keys are made by OpenSSH's own `ssh-keygen` (Ed25519, no passphrase) each time a field comes
up and removed by `field down`: a field is a rehearsal rig, not a place to keep identities. The
operator's `known_hosts` lists every board's host key, so `flash` checks host keys strictly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devices.field import iproute


@dataclass(frozen=True)
class KeyPair:
    """A private key file and its public key line."""

    private: Path
    public_line: str


def generate(keygen: str, path: Path, comment: str) -> KeyPair:
    """Make a fresh Ed25519 key at `path` (and `path`.pub), replacing any old one.

    Raises
    ------
    FieldCommandError
        When ssh-keygen fails.
    """
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    iproute.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    public = path.with_name(path.name + ".pub").read_text().strip()
    return KeyPair(path, public)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (sshd's StrictModes and ssh both insist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def known_hosts_text(hosts: Iterable[tuple[str, str]]) -> str:
    """`known_hosts` lines for (address, public key line) pairs on port 22 (sshd(8), KNOWN_HOSTS).

    The key comment is dropped: a known_hosts line is ``host keytype key``.
    """
    lines = []
    for address, public_line in hosts:
        keytype, key = public_line.split()[:2]
        lines.append(f"{address} {keytype} {key}")
    return "\n".join(lines) + "\n"
