"""Helpers for the broker tests: polling, and private Mosquitto/amqtt brokers on free ports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.client import MqttClient, TlsFiles
from broker.credentials import FleetCredentials, make_credentials, write_credentials
from broker.embedded import free_port
from broker.mosquitto import MAX_PACKET_BYTES, MosquittoProcess, MosquittoSettings, write_mosquitto_config


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.02) -> bool:
    """Poll `predicate` until true or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


@dataclass
class PrivateBroker:
    """A running Mosquitto with generated credentials (and certificates, with TLS)."""

    process: MosquittoProcess
    credentials: FleetCredentials
    out_dir: Path
    certificates: bool  # clients authenticate by certificate (CN = username)

    @property
    def url(self) -> str:
        """The broker's URL."""
        return self.process.url

    def client(self, user: str | None, client_id: str | None = None, *, password: str | None = None,
               **kwargs: Any) -> MqttClient:
        """Make a client of `user` with its own secret (or certificate), unless `password` is given."""
        if self.certificates:
            pki = self.out_dir / "pki"
            kwargs.setdefault("tls", TlsFiles(str(pki / "ca.pem"), str(pki / "clients" / f"{user}.pem"),
                                              str(pki / "clients" / f"{user}.key")))
        elif user is not None:
            kwargs.setdefault("password", password or self.credentials.passwords.get(user, "nope"))
        elif self.process.tls:
            kwargs.setdefault("tls", TlsFiles(str(self.out_dir / "pki" / "ca.pem")))
        return MqttClient(self.url, client_id or f"{self.credentials.fleet}-{user}", username=user,
                          **kwargs)


@contextmanager
def private_mosquitto(out_dir: Path, fleet: str, agent_ids: list[str], *, tls: bool = False,
                      certificates: bool = False, max_packet_bytes: int = MAX_PACKET_BYTES,
                      readable_updates: dict[str, list[str]] | None = None) -> Iterator[PrivateBroker]:
    """Mosquitto running the configuration parse-edge generates, on a free loopback port.

    Credentials come from `broker.credentials`; with `tls` a PKI from `broker.certs`, and with
    `certificates` clients log in by certificate instead of password.
    """
    credentials = make_credentials(fleet, agent_ids)
    files = write_credentials(credentials, out_dir / "credentials")
    tls_files = None
    if tls or certificates:
        from broker.certs import write_pki

        pki = write_pki(out_dir / "pki", agent_ids, hostnames=["localhost", "127.0.0.1"])
        tls_files = TlsFiles(str(pki.ca_cert), str(pki.server_cert), str(pki.server_key))
    settings = MosquittoSettings(fleet=fleet, agent_ids=agent_ids, port=free_port(),
                                 bind_address="127.0.0.1", persistence=False,
                                 password_file=None if certificates else files.passwd,
                                 tls=tls_files, require_client_certificate=certificates,
                                 use_identity_as_username=certificates,
                                 max_packet_bytes=max_packet_bytes, readable_updates=readable_updates)
    conf = write_mosquitto_config(settings, out_dir / "mosquitto")
    with MosquittoProcess(conf.conf, settings.port, tls=tls_files is not None) as process:
        yield PrivateBroker(process, credentials, out_dir, certificates)
