"""The secrets a fleet config names: the fleet key, an identity's MQTT login and TLS files.

The fleet YAML never holds a secret (edge.config.load refuses `broker.password` and
`broker.hmac_key`); it names files, and this module reads them when a process needs them:

- `broker.credentials: DIR` (written by `parse-edge broker credentials`): `DIR/fleet.key`,
  `DIR/agents/<id>.secret` for agent `<id>`, `DIR/operator.secret` for the trial runner;
- `broker.key_file` / `broker.password_file`: one file each (what a board's bundle carries); they
  take precedence over the folder;
- `broker.certs: DIR` (written by `parse-edge broker certs`): `DIR/ca.pem` and
  `DIR/clients/<identity>.pem|.key`; else `broker.tls`.

Every secret file must be one line, mode 0600 (broker.credentials.read_secret); a missing,
unreadable or world-readable one is a `UserError`: one line naming the file, exit status 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.address import TlsFiles
from broker.credentials import OPERATOR, read_fleet_key, read_secret
from broker.keys import KeyRing
from edge.config.schema import FleetConfig
from edge.errors import UserError


@dataclass(frozen=True)
class Login:
    """How one identity (an agent id, or the operator) connects to the broker."""

    username: str | None
    password: str | None
    tls: TlsFiles | None


def _user_error(exc: ValueError) -> UserError:
    # broker.credentials' messages are already `<file>: <what>: <expected>`.
    return UserError(str(exc))


def key_path(cfg: FleetConfig) -> Path | None:
    """The fleet key file the config names (key_file, else credentials/fleet.key), or None."""
    broker = cfg.broker
    if broker.key_file:
        return cfg.resolve_path(broker.key_file)
    if broker.credentials:
        return cfg.resolve_path(broker.credentials) / "fleet.key"
    return None


def fleet_keys(cfg: FleetConfig) -> KeyRing | None:
    """The key ring every message is signed and verified with; None when the config names no key.

    Raises
    ------
    UserError
        When the key file is missing, unreadable, malformed, short or readable by others.
    """
    path = key_path(cfg)
    if path is None:
        return None
    try:
        return KeyRing(cfg.fleet, read_fleet_key(path))
    except ValueError as exc:
        raise _user_error(exc) from None


def password_path(cfg: FleetConfig, identity: str) -> Path | None:
    """The MQTT secret file of `identity` (an agent id or the operator), or None."""
    broker = cfg.broker
    if broker.password_file:
        return cfg.resolve_path(broker.password_file)
    if broker.credentials:
        folder = cfg.resolve_path(broker.credentials)
        return folder / f"{identity}.secret" if identity == OPERATOR else \
            folder / "agents" / f"{identity}.secret"
    return None


def tls_files(cfg: FleetConfig, identity: str) -> TlsFiles | None:
    """CA and client certificate of `identity`: from `broker.certs`, else `broker.tls`, else None.

    Raises
    ------
    UserError
        When a named file does not exist.
    """
    broker = cfg.broker
    if broker.certs:
        folder = cfg.resolve_path(broker.certs)
        files = TlsFiles(str(folder / "ca.pem"), str(folder / "clients" / f"{identity}.pem"),
                         str(folder / "clients" / f"{identity}.key"))
        field = "broker.certs"
    elif broker.tls is not None:
        tls = broker.tls
        files = TlsFiles(str(cfg.resolve_path(tls.ca_file)),
                         str(cfg.resolve_path(tls.cert_file)) if tls.cert_file else None,
                         str(cfg.resolve_path(tls.key_file)) if tls.key_file else None)
        field = "broker.tls"
    else:
        return None
    for path in (files.ca_file, files.cert_file, files.key_file):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: {field}: expected a readable PEM file (from `parse-edge "
                            "broker certs`)")
    return files


def mqtt_login(cfg: FleetConfig, identity: str) -> Login:
    """Username, password and TLS files `identity` connects with.

    With a secret file the username is the identity itself: the generated ACL knows agents by
    their id and the trial runner as the operator.

    Raises
    ------
    UserError
        When the secret or a TLS file is missing, unreadable or readable by others.
    """
    path = password_path(cfg, identity)
    tls = tls_files(cfg, identity)
    if path is None:
        # No password: a client certificate (CN = identity) or an open broker.
        username = cfg.broker.username or (identity if tls is not None and tls.cert_file else None)
        return Login(username, None, tls)
    try:
        return Login(identity, read_secret(path), tls)
    except ValueError as exc:
        raise _user_error(exc) from None


def check_secrets(cfg: FleetConfig, identities: list[str]) -> None:
    """Read every secret the identities will need, so a bad file stops a trial before it starts.

    Raises
    ------
    UserError
        For the first missing, unreadable or world-readable file.
    """
    fleet_keys(cfg)
    for identity in identities:
        mqtt_login(cfg, identity)
