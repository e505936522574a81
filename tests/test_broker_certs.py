"""Trial PKI: certificates that verify, name the right hosts and agents, and a real Mosquitto that
checks them (client certificate CN = MQTT username; the client checks the server's host name)."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import topics
from broker.certs import write_pki
from broker.client import MqttClient, TlsFiles
from broker.embedded import free_port
from broker.mosquitto import MosquittoProcess, MosquittoSettings, write_mosquitto_config

FLEET = "pki"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_chain_to_the_ca_with_the_right_names(tmp_path: Path) -> None:
    # Execute
    pki = write_pki(tmp_path, ["a1", "a2"], hostnames=["broker.lan", "10.0.0.5"])
    # Assert
    ca = _load(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _load(pki.server_cert)
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert sorted(pki.clients) == ["a1", "a2", "operator"]
    for name, (cert_path, key_path) in pki.clients.items():
        cert = _load(cert_path)
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    assert oct(pki.ca_key.stat().st_mode & 0o777) == "0o600"
    assert oct(pki.server_key.stat().st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("kwargs,match", [({"hostnames": []}, "hostnames"),
                                          ({"hostnames": ["bad host"]}, "hostname"),
                                          ({"days": 0}, "days"), ({"agent_ids": ["a1", "a1"]}, "duplicates")])
def test_bad_pki_input_names_the_field(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    arguments: dict[str, object] = {"agent_ids": ["a1"], **kwargs}
    with pytest.raises(ValueError, match=match):
        write_pki(tmp_path, **arguments)  # type: ignore[arg-type]


def test_client_checks_the_servers_host_name(tmp_path: Path) -> None:
    # Prepare: a server certificate for "localhost" only, a TLS listener requiring certificates
    pki = write_pki(tmp_path / "pki", ["a1"], hostnames=["localhost"])
    port = free_port()
    settings = MosquittoSettings(FLEET, ["a1"], port=port, bind_address="127.0.0.1", persistence=False,
                                 tls=TlsFiles(str(pki.ca_cert), str(pki.server_cert), str(pki.server_key)),
                                 require_client_certificate=True, use_identity_as_username=True)
    files = write_mosquitto_config(settings, tmp_path / "conf")
    a1 = TlsFiles(str(pki.ca_cert), *map(str, pki.clients["a1"]))
    with MosquittoProcess(files.conf, port, tls=True):
        # Execute / Assert: by its certified name the round trip works, as user "a1" (the CN)
        got = threading.Event()
        client = MqttClient(f"mqtts://localhost:{port}", "c1", tls=a1, on_message=lambda t, p: got.set())
        client.start(timeout_s=5)
        try:
            client.subscribe(topics.status_topic(FLEET, "a1"))
            assert client.wait_subscribed(5)
            client.publish(topics.status_topic(FLEET, "a1"), b"{}")
            assert got.wait(5)
        finally:
            client.stop(publish_will=False)
        # by an address the certificate does not name, the client refuses the server
        wrong_name = MqttClient(f"mqtts://127.0.0.1:{port}", "c2", tls=a1)
        with pytest.raises(ConnectionError):
            wrong_name.start(timeout_s=2)
        # and a certificate from another CA is refused by the broker
        other = write_pki(tmp_path / "other", ["a1"], hostnames=["localhost"])
        stranger = MqttClient(f"mqtts://localhost:{port}", "c3",
                              tls=TlsFiles(str(pki.ca_cert), *map(str, other.clients["a1"])))
        with pytest.raises(ConnectionError):
            stranger.start(timeout_s=2)
