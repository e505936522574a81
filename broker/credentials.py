"""One identity per board: MQTT secrets, Mosquitto's hashed password file, the fleet key.

There is a random MQTT secret per agent and one for the operator; the fleet key is what message
HMACs derive from (broker.keys).

`write_credentials(make_credentials(fleet, agents), out)` writes

    out/passwd               Mosquitto 2 password file (user:$7$...), for `password_file`
    out/fleet.key            the fleet's HMAC key, hex (every bundle carries it)
    out/agents/<id>.secret   agent <id>'s MQTT password (only <id>'s bundle carries it)
    out/operator.secret      the operator's MQTT password (trial runner, watch)

Secret files are mode 0600; the password file is 0640, group `mosquitto` when that group exists,
because Mosquitto started as root reads it after dropping to that user.

The hash is the `$7$` format of `mosquitto_passwd` in Mosquitto 2: PBKDF2-HMAC-SHA512 with a
12-byte random salt, `$7$<iterations>$<base64 salt>$<base64 hash>` (mosquitto's
src/password_mosq.c). The iteration count is the tool's default, 101: each secret is 256 random
bits, so key stretching would add nothing against guessing.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from broker import topics
from broker.keys import KEY_BYTES

OPERATOR = "operator"
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS, Mosquitto 2.0)
_SALT_BYTES = 12


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash `password` in Mosquitto 2's `$7$` format (PBKDF2-SHA512), as `mosquitto_passwd` does.

    Parameters
    ----------
    password : str
        The clear-text secret.
    salt : bytes, optional
        12 random bytes by default (tests pass a fixed salt).
    iterations : int
        PBKDF2 iterations (Mosquitto reads the count from the hash).

    Returns
    -------
    str
        `$7$<iterations>$<salt b64>$<sha512 b64>`.
    """
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _check_user(user: str, password: str) -> None:
    if not user or ":" in user or any(c in user for c in "\r\n"):
        raise ValueError(f"user {user!r}: must be non-empty without ':' or a line break")
    if any(c in password for c in "\r\n"):
        raise ValueError(f"password of {user}: may not contain a line break")


def restrict_to_mosquitto(path: Path) -> None:
    """Make `path` readable by the broker only: mode 0640 and, as root, group `mosquitto`.

    Mosquitto started as root reads its files after dropping to that user; the group is set only
    when it exists.
    """
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            os.chown(path, 0, grp.getgrnam("mosquitto").gr_gid)


def write_passwd(path: Path, users: dict[str, str]) -> None:
    """Write a Mosquitto password file holding `users` (name -> clear-text password), hashed.

    Raises
    ------
    ValueError
        On a user name with ':' or a line break, or a password with a line break.
    """
    for user, password in users.items():
        _check_user(user, password)
    _write_private(path, "".join(f"{user}:{hash_password(pw)}\n" for user, pw in users.items()))
    restrict_to_mosquitto(path)


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start (no window in which another user could open it), then replaced
    # atomically so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class FleetCredentials:
    """Secrets of one fleet: an MQTT password per agent and the operator, and the fleet key."""

    fleet: str
    passwords: dict[str, str]  # MQTT username (agent id or operator) -> password
    fleet_key: bytes
    operator: str = OPERATOR


class CredentialFiles(NamedTuple):
    """Paths written by `write_credentials`."""

    passwd: Path
    fleet_key: Path
    secrets: dict[str, Path]  # username -> its secret file


def make_credentials(fleet: str, agent_ids: list[str], operator: str = OPERATOR) -> FleetCredentials:
    """Fresh random secrets (256 bits each, `secrets.token_urlsafe`) for every agent and the operator.

    Raises
    ------
    ValueError
        On a bad fleet or agent id, duplicates, or an agent named like the operator.
    """
    topics.check_name("fleet", fleet)
    names = [topics.check_name("agent id", a) for a in agent_ids] + [operator]
    if len(set(names)) != len(names):
        raise ValueError(f"agent ids: duplicates, or one named {operator!r} like the operator")
    return FleetCredentials(fleet, {name: secrets.token_urlsafe(KEY_BYTES) for name in names},
                            secrets.token_bytes(KEY_BYTES), operator)


def write_credentials(credentials: FleetCredentials, out_dir: Path) -> CredentialFiles:
    """Write the password file, the fleet key and one secret file per user into `out_dir`."""
    (out_dir / "agents").mkdir(parents=True, exist_ok=True)
    passwd = out_dir / "passwd"
    write_passwd(passwd, credentials.passwords)
    key_path = out_dir / "fleet.key"
    _write_private(key_path, credentials.fleet_key.hex() + "\n")
    files = {}
    for user, password in credentials.passwords.items():
        path = (out_dir / f"{user}.secret" if user == credentials.operator
                else out_dir / "agents" / f"{user}.secret")
        _write_private(path, password + "\n")
        files[user] = path
    return CredentialFiles(passwd, key_path, files)


def _read_private(path: Path, what: str) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ValueError(f"{path}: {what}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {what}: unreadable ({exc})") from None
    if mode & 0o077:
        raise ValueError(f"{path}: {what}: readable by others (mode {mode & 0o777:o}); chmod 600 it")
    if not text or "\n" in text:
        raise ValueError(f"{path}: {what}: expected one line")
    return text


def read_secret(path: Path) -> str:
    """Read an MQTT secret from its file (one line, mode 0600).

    Raises
    ------
    ValueError
        `<path>: secret: <expected>` when missing, unreadable, empty or readable by others.
    """
    return _read_private(path, "secret")


def read_fleet_key(path: Path) -> bytes:
    """Read the fleet HMAC key from its file (hex, at least 16 bytes, mode 0600).

    Raises
    ------
    ValueError
        `<path>: fleet key: <expected>` when missing, malformed, short or readable by others.
    """
    text = _read_private(path, "fleet key")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: fleet key: expected hex digits") from None
    if len(key) < 16:
        raise ValueError(f"{path}: fleet key: {len(key)} bytes, expected at least 16")
    return key
