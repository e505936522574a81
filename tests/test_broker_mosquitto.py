"""Mosquitto configuration: generated files, and a real Mosquitto enforcing the ACL and passwords."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from broker import topics
from broker.client import MqttClient, TlsFiles
from broker.mosquitto import (
    MAX_PACKET_BYTES,
    MosquittoSettings,
    hash_password,
    render_acl,
    render_conf,
    write_mosquitto_config,
)
from tests.broker_support import private_mosquitto, wait_for

FLEET = "aclfleet"


def test_acl_lets_each_agent_write_only_its_own_topics() -> None:
    acl = render_acl(FLEET, ["a1", "a2"])
    lines = [line for line in acl.splitlines() if not line.startswith("#")]
    assert lines == [
        f"pattern read parse/{FLEET}/#",
        f"pattern write parse/{FLEET}/agents/%u/#",
        f"pattern write parse/{FLEET}/updates/%u/#",
        f"pattern write parse/{FLEET}/metrics/%u",
        f"pattern write parse/{FLEET}/control",
    ]


def test_conf_holds_listener_limits_persistence_and_tls(tmp_path: Path) -> None:
    settings = MosquittoSettings(FLEET, ["a1"], port=8883, username="u", password="p",
                                 tls=TlsFiles("ca.pem", "server.pem", "server.key"),
                                 require_client_certificate=True)
    conf = render_conf(settings, tmp_path, has_passwd=True)
    assert "listener 8883\n" in conf
    assert f"max_packet_size {MAX_PACKET_BYTES}" in conf and MAX_PACKET_BYTES > 256 * 1024
    assert "allow_anonymous false" in conf and f"password_file {tmp_path.resolve()}/passwd" in conf
    assert "persistence true" in conf and "persistence_location /var/lib/mosquitto/" in conf
    assert f"certfile {Path('server.pem').resolve()}" in conf and "require_certificate true" in conf
    open_conf = render_conf(MosquittoSettings(FLEET, persistence=False, bind_address="127.0.0.1"),
                            tmp_path, has_passwd=False)
    assert "listener 1883 127.0.0.1" in open_conf and "allow_anonymous true" in open_conf
    assert "persistence false" in open_conf and "password_file" not in open_conf


@pytest.mark.parametrize("settings,match", [
    (MosquittoSettings("bad/fleet"), "fleet"),
    (MosquittoSettings(FLEET, ["a1", "a+"]), "agent id"),
    (MosquittoSettings(FLEET, ["a1", "a1"]), "duplicates"),
    (MosquittoSettings(FLEET, port=0), "port"),
    (MosquittoSettings(FLEET, username="u"), "both"),
    (MosquittoSettings(FLEET, username="u:x", password="p"), "username"),
    (MosquittoSettings(FLEET, username="u", password="p\nq"), "line break"),
    (MosquittoSettings(FLEET, tls=TlsFiles("ca.pem")), "cert_file"),
])
def test_bad_settings_name_the_field(settings: MosquittoSettings, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        write_mosquitto_config(settings, tmp_path)
    assert not (tmp_path / "mosquitto.conf").exists()


def test_password_hash_format_is_mosquittos() -> None:
    hashed = hash_password("secret", salt=b"0123456789ab")
    kind, iterations, salt, digest = hashed.split("$")[1:]
    assert (kind, iterations, salt) == ("7", "101", "MDEyMzQ1Njc4OWFi")
    assert len(digest) == 88  # base64 of a 64-byte SHA-512


def test_passwords_with_colons_are_hashed_in_full(tmp_path: Path) -> None:
    from broker.mosquitto import write_passwd

    assert write_passwd(tmp_path / "p1", {"u": "plain"}) == "mosquitto_passwd"
    assert write_passwd(tmp_path / "p2", {"u": "has:colon"}) == "pbkdf2-sha512"
    assert (tmp_path / "p1").read_text().startswith("u:$7$101$")
    assert oct((tmp_path / "p1").stat().st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("prefer_tool,password", [(True, "s3cret pw"), (False, "s3cret:pw")],
                         ids=["mosquitto_passwd", "builtin-pbkdf2"])
def test_real_mosquitto_enforces_acl_and_password(tmp_path: Path, prefer_tool: bool,
                                                  password: str) -> None:
    # Prepare: Mosquitto running exactly the generated files
    with private_mosquitto(tmp_path, FLEET, ["a1", "a2"], username="fleet", password=password,
                           prefer_tool=prefer_tool) as mosquitto:
        seen: list[str] = []
        lock = threading.Lock()

        def record(topic: str, payload: bytes) -> None:
            with lock:
                seen.append(topic)

        observer = MqttClient(mosquitto.url, "observer", username="fleet", password=password,
                              on_message=record).start()
        # a1 even borrows a2's client id: the ACL goes by the authenticated username
        a1 = MqttClient(mosquitto.url, "a2", username="a1", password=password, protocol=5).start()
        try:
            observer.subscribe(f"parse/{FLEET}/#")
            assert observer.wait_subscribed(5)
            forbidden = [topics.update_topic(FLEET, "a2", "enc/accel"), topics.status_topic(FLEET, "a2"),
                         topics.metrics_topic(FLEET, "a2")]
            allowed = [topics.update_topic(FLEET, "a1", "fuse/accel+gyro"),
                       topics.status_topic(FLEET, "a1"), topics.metrics_topic(FLEET, "a1"),
                       topics.control_topic(FLEET)]
            # Execute: forbidden first, so their absence is proven by the later allowed arrivals
            for topic in forbidden + allowed:
                a1.publish(topic, b"x")
            assert a1.flush(10)
            # Assert
            assert wait_for(lambda: len(seen) >= len(allowed), 10)
            with lock:
                assert seen == allowed
            assert a1.is_connected  # Mosquitto drops the messages, not the client
            users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
            assert sorted(users) == ["a1", "a2", "fleet"]
            intruder = MqttClient(mosquitto.url, "a3", username="a2", password="wrong")
            with pytest.raises(ConnectionError, match=r"[Nn]ot authori[sz]ed"):
                intruder.start(timeout_s=1)
        finally:
            a1.stop(publish_will=False)
            observer.stop(publish_will=False)


def _openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_pki(d: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=parse-edge test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        extra = ["-extfile", "san.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra, cwd=d)


def test_tls_listener_with_client_certificates(tmp_path: Path) -> None:
    from broker.embedded import free_port
    from broker.mosquitto import MosquittoProcess

    # Prepare: a PKI and the generated TLS configuration
    _make_pki(tmp_path)
    port = free_port()
    settings = MosquittoSettings(FLEET, ["a1"], port=port, bind_address="127.0.0.1",
                                 persistence=False, require_client_certificate=True,
                                 tls=TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "server.pem"),
                                              str(tmp_path / "server.key")))
    files = write_mosquitto_config(settings, tmp_path / "conf")
    url = f"mqtts://127.0.0.1:{port}"
    with MosquittoProcess(files.conf, port):
        # Execute / Assert: with a client certificate the round trip works over TLS
        got = threading.Event()
        client = MqttClient(url, "a1", username="a1", on_message=lambda t, p: got.set(),
                            tls=TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"),
                                         str(tmp_path / "client.key"))).start()
        try:
            client.subscribe(topics.metrics_topic(FLEET, "a1"))
            assert client.wait_subscribed(5)
            client.publish(topics.metrics_topic(FLEET, "a1"), b"{}")
            assert got.wait(5)
        finally:
            client.stop(publish_will=False)
        # without one, the handshake is refused
        anonymous = MqttClient(url, "a1", tls=TlsFiles(str(tmp_path / "ca.pem")))
        with pytest.raises(ConnectionError):
            anonymous.start(timeout_s=1)
