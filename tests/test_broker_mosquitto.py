"""Mosquitto configuration: generated files, and a real Mosquitto enforcing passwords and the ACL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from broker import topics
from broker.client import MqttClient, TlsFiles
from broker.mosquitto import (
    MAX_PACKET_BYTES,
    MosquittoSettings,
    render_acl,
    render_conf,
    write_mosquitto_config,
)
from tests.broker_support import PrivateBroker, private_mosquitto, wait_for

FLEET = "aclfleet"
AGENTS = ["a1", "a2", "a3", "a4"]


def test_acl_gives_each_agent_its_own_topics_and_the_operator_the_fleet() -> None:
    acl = render_acl(FLEET, ["a3", "a4"])
    blocks = [b.splitlines() for b in acl.split("\n\n")[1:] if b.strip()]
    root = f"parse/{FLEET}"
    assert blocks[0] == ["user a3", f"topic write {root}/agents/a3/status",
                         f"topic write {root}/updates/a3/#", f"topic write {root}/metrics/a3",
                         f"topic readwrite {root}/control",
                         f"topic read {root}/agents/+/status", f"topic read {root}/updates/+/#"]
    assert blocks[1][0] == "user a4" and f"topic write {root}/updates/a4/#" in blocks[1]
    assert blocks[2] == ["user operator", f"topic read {root}/#", f"topic write {root}/control"]
    assert "pattern" not in acl and "%u" not in acl  # no rule for users it does not name
    narrow = render_acl(FLEET, ["a3", "a4"], readable_updates={"a3": ["a4"]})
    reads = {block.splitlines()[0]: [line for line in block.splitlines() if "read" in line
                                      and "updates" in line]
             for block in narrow.split("\n\n")[1:3]}
    assert reads == {"user a3": [f"topic read {root}/updates/a3/#", f"topic read {root}/updates/a4/#"],
                     "user a4": [f"topic read {root}/updates/a4/#"]}


def test_conf_never_allows_anonymous_clients(tmp_path: Path) -> None:
    with_passwords = MosquittoSettings(FLEET, ["a1"], port=8883, password_file=tmp_path / "passwd",
                                       tls=TlsFiles("ca.pem", "server.pem", "server.key"))
    conf = render_conf(with_passwords, tmp_path / "acl")
    assert "listener 8883\n" in conf and f"max_packet_size {MAX_PACKET_BYTES}" in conf
    assert "allow_anonymous false" in conf and f"password_file {tmp_path.resolve()}/passwd" in conf
    assert "persistence true" in conf and "persistence_location /var/lib/mosquitto/" in conf
    assert f"certfile {Path('server.pem').resolve()}" in conf and "require_certificate false" in conf
    certificates = MosquittoSettings(FLEET, ["a1"], tls=TlsFiles("ca.pem", "s.pem", "s.key"),
                                     require_client_certificate=True, use_identity_as_username=True,
                                     persistence=False, bind_address="127.0.0.1")
    conf = render_conf(certificates, tmp_path / "acl")
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert "allow_anonymous false" in conf and "password_file" not in conf
    assert "listener 1883 127.0.0.1" in conf and "persistence false" in conf
    assert "allow_anonymous true" not in conf


@pytest.mark.parametrize("settings,match", [
    (MosquittoSettings("bad/fleet", password_file=Path("p")), "fleet"),
    (MosquittoSettings(FLEET, ["a1", "a+"], password_file=Path("p")), "agent id"),
    (MosquittoSettings(FLEET, ["a1", "a1"], password_file=Path("p")), "duplicates"),
    (MosquittoSettings(FLEET, ["operator"], password_file=Path("p")), "operator"),
    (MosquittoSettings(FLEET, port=0, password_file=Path("p")), "port"),
    (MosquittoSettings(FLEET, max_packet_bytes=100, password_file=Path("p")), "max_packet_bytes"),
    (MosquittoSettings(FLEET), "anonymous clients are never allowed"),
    (MosquittoSettings(FLEET, tls=TlsFiles("ca.pem"), password_file=Path("p")), "cert_file"),
    (MosquittoSettings(FLEET, tls=TlsFiles(None, "s", "k"), require_client_certificate=True,
                       use_identity_as_username=True), "ca_file"),
    (MosquittoSettings(FLEET, use_identity_as_username=True), "require_client_certificate"),
    (MosquittoSettings(FLEET, ["a1"], readable_updates={"a1": ["a9"]}, password_file=Path("p")),
     "a9"),
])
def test_bad_settings_name_the_field(settings: MosquittoSettings, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        write_mosquitto_config(settings, tmp_path)
    assert not (tmp_path / "mosquitto.conf").exists()


class Recorder:
    def __init__(self) -> None:
        self.topics: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.topics.append(topic)

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.topics)


def _cannot_write_a4s_topics(broker: PrivateBroker, protocol: int) -> MqttClient:
    """a3 publishes on a4's topics, then on its own; an operator watching everything sees only
    a3's own messages (so the denied ones never arrived, not even late). Returns a3's client."""
    recorder = Recorder()
    operator = broker.client("operator", on_message=recorder).start()
    # a3 even borrows a4's client id: the ACL goes by the authenticated user
    a3 = broker.client("a3", f"{FLEET}-a4", protocol=protocol).start()
    try:
        operator.subscribe(f"parse/{FLEET}/#")
        assert operator.wait_subscribed(5)
        forbidden = [topics.update_topic(FLEET, "a4", "enc/accel"), topics.status_topic(FLEET, "a4"),
                     topics.metrics_topic(FLEET, "a4"), topics.probe_topic(FLEET, "a4"),
                     f"parse/{FLEET}/agents/a3/other", f"parse/{FLEET}/anything"]
        allowed = [topics.update_topic(FLEET, "a3", "fuse/accel+gyro"), topics.status_topic(FLEET, "a3"),
                   topics.metrics_topic(FLEET, "a3"), topics.control_topic(FLEET)]
        for topic in forbidden + allowed:
            a3.publish(topic, b"x")
        assert a3.flush(10)
        assert wait_for(lambda: len(recorder.seen()) >= len(allowed), 10)
        assert recorder.seen() == allowed
        assert a3.is_connected  # Mosquitto drops the messages, not the client
        return a3
    finally:
        a3.stop(publish_will=False)
        operator.stop(publish_will=False)


def test_a3_cannot_write_a4s_topics_with_its_password(tmp_path: Path) -> None:
    with private_mosquitto(tmp_path, FLEET, AGENTS) as broker:
        a3 = _cannot_write_a4s_topics(broker, protocol=5)
        # MQTT 5: every denied publish came back as a refusal naming the topic
        refused = [(r.action, r.topic, r.code) for r in a3.refusals]
        assert len(refused) == 6 and all(a == "publish" and c == 0x87 for a, _, c in refused)
        assert refused[0][1] == topics.update_topic(FLEET, "a4", "enc/accel")
        with pytest.raises(RuntimeError, match=r"refused publish on parse/aclfleet/updates/a4/enc/accel: "
                           r"Not authorized \(the broker's ACL does not let MQTT user 'a3'"):
            a3.raise_for_refusals()
        # and a3 (nor anyone) cannot log in as a4 without a4's secret, or anonymously
        for user, password in (("a4", broker.credentials.passwords["a3"]), (None, None)):
            intruder = broker.client(user, "intruder", password=password)
            with pytest.raises(ConnectionError, match=r"[Nn]ot authori[sz]ed"):
                intruder.start(timeout_s=2)


def test_a3_cannot_write_a4s_topics_with_its_certificate(tmp_path: Path) -> None:
    with private_mosquitto(tmp_path, FLEET, AGENTS, certificates=True) as broker:
        assert broker.url.startswith("mqtts://")
        _cannot_write_a4s_topics(broker, protocol=4)
        # no certificate: the TLS handshake is refused; a certificate from another CA too
        ca_only = MqttClient(broker.url, "anon", tls=TlsFiles(str(tmp_path / "pki" / "ca.pem")))
        with pytest.raises(ConnectionError):
            ca_only.start(timeout_s=2)


def test_agents_read_statuses_and_updates_but_not_metrics(tmp_path: Path) -> None:
    with private_mosquitto(tmp_path, FLEET, AGENTS, readable_updates={"a1": ["a2"]}) as broker:
        recorder = Recorder()
        a1 = broker.client("a1", on_message=recorder, protocol=5).start()
        senders = {a: broker.client(a, protocol=5).start() for a in ("a2", "a3")}
        try:
            a1.subscribe(f"parse/{FLEET}/#")
            assert a1.wait_subscribed(5)
            published = []
            for agent, client in senders.items():
                for topic in (topics.metrics_topic(FLEET, agent), topics.update_topic(FLEET, agent, "k"),
                              topics.status_topic(FLEET, agent)):
                    client.publish(topic, b"x")
                    published.append(topic)
                assert client.flush(10)
            senders["a3"].publish(topics.control_topic(FLEET), b"x")
            assert senders["a3"].flush(10)
            expected = [topics.update_topic(FLEET, "a2", "k"), topics.status_topic(FLEET, "a2"),
                        topics.status_topic(FLEET, "a3"), topics.control_topic(FLEET)]
            assert wait_for(lambda: len(recorder.seen()) >= len(expected), 10)
            assert sorted(recorder.seen()) == sorted(expected)  # a3's update: not a neighbour of a1
        finally:
            for client in (a1, *senders.values()):
                client.stop(publish_will=False)
