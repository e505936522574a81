"""A trial PKI made with the `cryptography` library: CA, server and per-agent client certificates.

There is one client certificate per agent (CN = agent id, for Mosquitto's `use_identity_as_username`)
and one for the operator.

`write_pki(out, agent_ids, hostnames=[...])` writes

    out/ca.pem, out/ca.key             the trial CA (its key never leaves the operator's machine)
    out/server.pem, out/server.key     the broker's certificate, SANs = hostnames and IP addresses
    out/clients/<id>.pem, <id>.key     one client certificate per agent, and for the operator

Keys are ECDSA P-256 (fast TLS handshakes on small boards), certificates SHA-256-signed, X.509 v3
with the extensions RFC 5280 asks for (basic constraints, key usage, extended key usage, subject and
authority key identifiers). Key files are mode 0600; the server key 0640 group `mosquitto`.

`cryptography` is an optional dependency (`pip install 'parse-edge[security]'`): only the machine
that makes the certificates needs it; boards read PEM files through Python's `ssl`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import topics
from broker.credentials import OPERATOR, restrict_to_mosquitto

_DEFAULT_DAYS = 365


class PkiFiles(NamedTuple):
    """Paths written by `write_pki`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # CN -> (certificate, key)


def _san_entries(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"hostname: {name!r} is neither an IP address nor a DNS name") from None
            entries.append(x509.DNSName(name))
    return entries


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def write_pki(out_dir: Path, agent_ids: list[str], hostnames: Iterable[str] = ("localhost", "127.0.0.1"),
              operator: str = OPERATOR, days: int = _DEFAULT_DAYS) -> PkiFiles:
    """Make a CA, a server certificate for `hostnames` and client certificates; write them as PEM.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created).
    agent_ids : list of str
        One client certificate each, CN = agent id.
    hostnames : iterable of str
        DNS names and IP addresses the broker is reached at (server SANs; clients check them).
    operator : str
        CN of the operator's client certificate.
    days : int
        Validity of every certificate (1..3650).

    Raises
    ------
    ValueError
        On a bad agent id, hostname or validity.
    """
    if not 1 <= days <= 3650:
        raise ValueError(f"days: expected 1..3650, got {days}")
    names = [topics.check_name("agent id", a) for a in agent_ids] + [operator]
    if len(set(names)) != len(names):
        raise ValueError(f"agent ids: duplicates, or one named {operator!r} like the operator")
    hosts = list(hostnames)
    sans = _san_entries(hosts)
    if not sans:
        raise ValueError("hostnames: give at least one DNS name or IP address of the broker")
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate clock skew
    until = now + dt.timedelta(days=days)

    def build(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.CertificateBuilder:
        public = key.public_key()
        issuer_public = signer.public_key()
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer).public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=not ca, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=not ca, key_cert_sign=ca, crl_sign=ca,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),
                               critical=False))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "clients").mkdir(exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parse-edge trial CA")])
    ca_cert = build("parse-edge trial CA", ca_key, ca_name, ca_key, ca=True).sign(ca_key, hashes.SHA256())
    ca_paths = (out_dir / "ca.pem", out_dir / "ca.key")
    ca_paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_paths[1], ca_key)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (build(hosts[0], server_key, ca_name, ca_key, ca=False)
              .add_extension(x509.SubjectAlternativeName(sans), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    server_paths = (out_dir / "server.pem", out_dir / "server.key")
    server_paths[0].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_paths[1], server_key)
    restrict_to_mosquitto(server_paths[1])

    clients = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (build(name, key, ca_name, ca_key, ca=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths = (out_dir / "clients" / f"{name}.pem", out_dir / "clients" / f"{name}.key")
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(paths[1], key)
        clients[name] = paths
    return PkiFiles(ca_paths[0], ca_paths[1], server_paths[0], server_paths[1], clients)
