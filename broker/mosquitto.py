"""Mosquitto configuration for a fleet: mosquitto.conf and an ACL, secure by default.

Clients are authenticated by the per-agent password file of `broker.credentials`, or by client
certificates (`require_certificate` + `use_identity_as_username`: the certificate's CN is the MQTT
username, see `broker.certs`); a configuration allowing anonymous clients is never written.
Identity is the MQTT *username*: agent `<id>` connects as user `<id>`, the operator (trial runner,
watch) as `operator`; the client id is free (e.g. `<fleet>-<agent>`, unique on a shared broker).

The ACL gives each agent exactly what it needs (DESIGN.md §3 topics):

    write      parse/<fleet>/agents/<id>/status, parse/<fleet>/updates/<id>/#, parse/<fleet>/metrics/<id>
    readwrite  parse/<fleet>/control (keyframe requests, run announcements)
    read       every agent's status; the updates of the agents it may mix with (all by default)

and the operator reads everything of the fleet and writes the control topic. Mosquitto drops what
the ACL denies; MQTT 5 clients learn it from the PUBACK reason code, MQTT 3.1.1 clients from
`broker.probe`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from broker import topics
from broker.chunking import MAX_MESSAGE_BYTES
from broker.client import TlsFiles
from broker.credentials import OPERATOR
from broker.process import terminate

# A chunk is at most 256 KiB of MQTT payload; the PUBLISH packet adds the topic and a few bytes.
MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + 8 * 1024
MIN_PACKET_BYTES = 2048  # below this not even a status message fits


@dataclass(frozen=True)
class MosquittoSettings:
    """What the generated broker configuration needs to know.

    Parameters
    ----------
    fleet : str
        Fleet name (topic level).
    agent_ids : list of str
        Every agent; each gets its own ACL block.
    port : int
        Listener port.
    bind_address : str or None
        Listen on this address only; None: every interface.
    password_file : Path or None
        Hashed password file (`broker.credentials.write_credentials`).
    operator : str
        MQTT username of the operator (reads the whole fleet).
    tls : TlsFiles or None
        For the listener: CA (to check client certificates), server certificate and key.
    require_client_certificate : bool
        Refuse TLS clients without a certificate signed by the CA.
    use_identity_as_username : bool
        The client certificate's CN is the MQTT username (no password needed).
    readable_updates : mapping or None
        agent -> the agents whose updates it may read (its possible neighbours); None: all.
    persistence : bool
        Keep retained messages across broker restarts.
    persistence_dir : str
        Where (the Debian/Raspberry Pi OS package's location by default).
    max_packet_bytes : int
        Largest MQTT packet the broker accepts (MQTT 5 clients are told in CONNACK).
    """

    fleet: str
    agent_ids: list[str] = field(default_factory=list)
    port: int = 1883
    bind_address: str | None = None
    password_file: Path | None = None
    operator: str = OPERATOR
    tls: TlsFiles | None = None
    require_client_certificate: bool = False
    use_identity_as_username: bool = False
    readable_updates: Mapping[str, Sequence[str]] | None = None
    persistence: bool = True
    persistence_dir: str = "/var/lib/mosquitto/"
    max_packet_bytes: int = MAX_PACKET_BYTES

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        topics.check_name("fleet", self.fleet)
        for agent in [*self.agent_ids, self.operator]:
            topics.check_name("agent id", agent)
        if len(set(self.agent_ids) | {self.operator}) != len(self.agent_ids) + 1:
            raise ValueError(f"agent ids: duplicates, or one named {self.operator!r} like the operator")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: expected 1..65535, got {self.port}")
        if not MIN_PACKET_BYTES <= self.max_packet_bytes <= 268_435_455:  # MQTT's own limit
            raise ValueError(f"max_packet_bytes: expected {MIN_PACKET_BYTES}..268435455, "
                             f"got {self.max_packet_bytes}")
        if self.tls is not None and not (self.tls.cert_file and self.tls.key_file):
            raise ValueError("tls: the broker listener needs cert_file and key_file")
        if self.require_client_certificate and (self.tls is None or not self.tls.ca_file):
            raise ValueError("require_client_certificate: needs tls with a ca_file to check them by")
        if self.use_identity_as_username and not self.require_client_certificate:
            raise ValueError("use_identity_as_username: needs require_client_certificate")
        if self.password_file is None and not self.use_identity_as_username:
            raise ValueError("authentication: give a password file (`broker credentials`) or require "
                             "client certificates with use_identity_as_username; anonymous clients "
                             "are never allowed")
        readable = self.readable_updates or {}
        unknown = (set(readable) | {o for others in readable.values() for o in others}) - set(self.agent_ids)
        if unknown:
            raise ValueError(f"readable_updates: unknown agents {sorted(unknown)}")


class MosquittoFiles(NamedTuple):
    """Paths written by `write_mosquitto_config`."""

    conf: Path
    acl: Path


def render_acl(fleet: str, agent_ids: Sequence[str], operator: str = OPERATOR,
               readable_updates: Mapping[str, Sequence[str]] | None = None) -> str:
    """ACL text: one `user` block per agent and one for the operator (see the module docstring)."""
    root = f"{topics.ROOT}/{topics.check_name('fleet', fleet)}"
    lines = [f"# parse-edge ACL for fleet {fleet}: agents {', '.join(agent_ids) or '(none)'}, "
             f"operator {operator}",
             "# The MQTT username (or client certificate CN) is the agent id. No anonymous access.", ""]
    for agent in agent_ids:
        topics.check_name("agent id", agent)
        readable = (["+"] if readable_updates is None
                    else sorted({agent, *readable_updates.get(agent, ())}))
        lines += [f"user {agent}",
                  f"topic write {root}/agents/{agent}/status",
                  f"topic write {root}/updates/{agent}/#",
                  f"topic write {root}/metrics/{agent}",
                  f"topic readwrite {root}/control",
                  f"topic read {root}/agents/+/status",
                  *(f"topic read {root}/updates/{other}/#" for other in readable),
                  ""]
    lines += [f"user {topics.check_name('operator', operator)}", f"topic read {root}/#",
              f"topic write {root}/control", ""]
    return "\n".join(lines)


def render_conf(settings: MosquittoSettings, acl_path: Path) -> str:
    """mosquitto.conf text for `settings`, referring to the ACL at `acl_path`."""
    bind = f" {settings.bind_address}" if settings.bind_address else ""
    lines = [
        f"# mosquitto.conf generated by parse-edge for fleet {settings.fleet}",
        "per_listener_settings false",
        f"listener {settings.port}{bind}",
        "protocol mqtt",
        "allow_anonymous false",
        f"acl_file {acl_path.resolve()}",
        f"max_packet_size {settings.max_packet_bytes}",
        "max_inflight_messages 64",
        "max_queued_messages 10000",
    ]
    if settings.password_file is not None:
        lines.append(f"password_file {Path(settings.password_file).resolve()}")
    if settings.persistence:
        location = settings.persistence_dir.rstrip("/") + "/"
        lines += ["persistence true", f"persistence_location {location}", "autosave_interval 60"]
    else:
        lines.append("persistence false")
    if settings.tls is not None:
        if settings.tls.ca_file:
            lines.append(f"cafile {Path(settings.tls.ca_file).resolve()}")
        lines += [
            f"certfile {Path(settings.tls.cert_file or '').resolve()}",
            f"keyfile {Path(settings.tls.key_file or '').resolve()}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if settings.require_client_certificate else 'false'}",
            f"use_identity_as_username {'true' if settings.use_identity_as_username else 'false'}",
        ]
    return "\n".join(lines) + "\n"


def write_mosquitto_config(settings: MosquittoSettings, out_dir: Path) -> MosquittoFiles:
    """Check `settings`, then write mosquitto.conf and acl into `out_dir`.

    Raises
    ------
    ValueError
        From `MosquittoSettings.check`, before anything is written.
    """
    settings.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.persistence:
        _prepare_persistence_dir(Path(settings.persistence_dir))
    acl = out_dir / "acl"
    acl.write_text(render_acl(settings.fleet, settings.agent_ids, settings.operator,
                              settings.readable_updates))
    conf = out_dir / "mosquitto.conf"
    conf.write_text(render_conf(settings, acl))
    return MosquittoFiles(conf, acl)


def _prepare_persistence_dir(path: Path) -> None:
    """Create the folder mosquitto keeps its database in, writable by the `mosquitto` user.

    Mosquitto started as root drops to that user before it writes `mosquitto.db`.
    """
    if path.exists():
        return
    path.mkdir(parents=True, mode=0o750)
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        os.chown(path, entry.pw_uid, entry.pw_gid)


class MosquittoProcess:
    """A `mosquitto -c CONF` child process listening on `port` (for tests, benches and trials).

    `tls` says whether the listener speaks TLS, for `url` (`mqtts://` then).
    """

    def __init__(self, conf: Path, port: int, host: str = "127.0.0.1",
                 binary: str | None = None, startup_timeout_s: float = 10.0,
                 tls: bool = False) -> None:
        self.conf = conf
        self.port = port
        self.host = host
        self.tls = tls
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Where the broker's log (its stderr) goes: beside the config."""
        return self.conf.with_name(self.conf.name + ".log")

    @property
    def url(self) -> str:
        """The broker's URL on `host`."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self) -> MosquittoProcess:
        """Start mosquitto and wait until the port accepts connections."""
        conf = self.conf
        if os.geteuid() == 0:
            # As root, mosquitto drops to user `mosquitto` before reading the ACL and password
            # files, which private (0700) directories such as pytest's tmp_path would hide.
            conf = self.conf.with_name(self.conf.name + ".as-root")
            conf.write_text(self.conf.read_text() + "user root\n")
        # The log goes to a file: a pipe nobody reads would fill up and stall the broker.
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen([self.binary, "-c", str(conf)],
                                             stdout=subprocess.DEVNULL, stderr=log_file)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"mosquitto -c {self.conf} exited: {err.strip()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), 0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto -c {self.conf}: port {self.port} not open after "
                           f"{self.startup_timeout_s:g} s")

    def stop(self) -> None:
        """Terminate mosquitto (SIGTERM, then SIGKILL)."""
        process, self._process = self._process, None
        terminate(process)

    def __enter__(self) -> MosquittoProcess:
        """Start mosquitto."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop mosquitto."""
        self.stop()
