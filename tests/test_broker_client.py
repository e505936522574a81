"""The MQTT client against real brokers (embedded amqtt, MQTT 3.1.1; Mosquitto, MQTT 5):
multi-chunk exchange between three agents, last will on SIGKILL, counters, flush."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from broker import topics
from broker.client import MqttClient, parse_broker_url
from broker.discovery import AgentStatus, NeighbourTable, encode_status, offline_status
from broker.embedded import EmbeddedBroker
from broker.exchange import Update, UpdateReceiver, UpdateSender
from tests.broker_support import PrivateBroker, private_mosquitto, wait_for

FLEET = f"it{uuid.uuid4().hex[:8]}"
AGENTS = ["a1", "a2", "a3"]
BRANCH, SIG = "fuse/accel+gyro", "5ig"
N_ELEMENTS = 1_400_000  # 5.6 MB as fp32: 23 chunks of <= 256 KiB
KEY = b"fleet-key"


@pytest.fixture(scope="module")
def amqtt_url() -> Iterator[str]:
    with EmbeddedBroker() as broker:
        yield broker.url


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    with private_mosquitto(tmp_path_factory.mktemp("mq"), FLEET, AGENTS) as broker:
        yield broker


class Broker:
    """One broker kind: its URL, protocol level, and clients logged in as a given user."""

    def __init__(self, url: str, protocol: int, private: PrivateBroker | None = None) -> None:
        self.url, self.protocol, self.private = url, protocol, private

    def password(self, user: str) -> str | None:
        return self.private.credentials.passwords[user] if self.private else None

    def client(self, user: str, client_id: str, **kwargs: object) -> MqttClient:
        # username = agent id is what the generated Mosquitto ACL keys on; the client id is free
        return MqttClient(self.url, client_id, username=user, password=self.password(user),
                          protocol=self.protocol, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each broker kind: amqtt (MQTT 3.1.1, open) and Mosquitto (MQTT 5, generated credentials)."""
    if request.param == "amqtt":
        return Broker(request.getfixturevalue("amqtt_url"), 4)
    private = request.getfixturevalue("mosquitto")
    return Broker(private.url, 5, private)


class Agent:
    """Just enough of an agent: one client, a sender and a receiver."""

    def __init__(self, broker: Broker, agent: str) -> None:
        self.agent = agent
        self.updates: list[Update] = []
        self.got = threading.Condition()
        self.sender = UpdateSender(FLEET, agent, "fp32", hmac_key=KEY)
        self.receiver = UpdateReceiver(FLEET, lambda b: (SIG, N_ELEMENTS) if b == BRANCH else None,
                                       hmac_key=KEY)
        self.client = broker.client(agent, f"{FLEET}-{agent}", on_message=self.on_message,
                                    will=(topics.status_topic(FLEET, agent), offline_status(agent)))

    def on_message(self, topic: str, payload: bytes) -> None:
        update = self.receiver.feed(topic, payload)
        if update is not None:
            with self.got:
                self.updates.append(update)
                self.got.notify_all()


def test_three_agents_exchange_multi_chunk_updates_intact(broker: Broker) -> None:
    # Prepare
    agents = [Agent(broker, a) for a in AGENTS]
    vectors = {a: np.random.default_rng(i).normal(size=N_ELEMENTS).astype(np.float32)
               for i, a in enumerate(AGENTS)}
    try:
        for agent in agents:
            agent.client.start()
            for other in AGENTS:
                if other != agent.agent:
                    agent.client.subscribe(topics.updates_filter(FLEET, other))
        assert all(agent.client.wait_subscribed(10) for agent in agents)
        # Execute
        messages = {}
        for agent in agents:
            messages[agent.agent] = agent.sender.encode(7, BRANCH, SIG, vectors[agent.agent])
            agent.client.publish_many(messages[agent.agent])
        assert all(agent.client.flush(60) for agent in agents)
        assert wait_for(lambda: all(len(a.updates) == 2 for a in agents), 60)
        # Assert
        assert all(len(m) > 20 for m in messages.values())
        assert all(len(p) <= 256 * 1024 for m in messages.values() for _, p in m)
        for agent in agents:
            assert sorted(u.sender for u in agent.updates) == sorted(set(AGENTS) - {agent.agent})
            for update in agent.updates:
                np.testing.assert_array_equal(update.vector, vectors[update.sender])
                assert update.bytes_on_wire == sum(len(p) for _, p in messages[update.sender])
            assert sum(agent.receiver.rejections.values()) == 0
            sent = agent.client.counters.sent_by_branch[BRANCH]
            received = agent.client.counters.received_by_branch[BRANCH]
            assert sent.payload_bytes == sum(len(p) for _, p in messages[agent.agent])
            assert received.payload_bytes == sum(u.bytes_on_wire for u in agent.updates)
            assert received.header_bytes > 0 and received.messages == 2 * len(messages["a1"])
    finally:
        for agent in agents:
            agent.client.stop()


_CHILD = """
import sys, time
from broker import topics
from broker.client import MqttClient
from broker.discovery import AgentStatus, encode_status, offline_status
url, fleet, agent, protocol = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
password = sys.stdin.readline().strip() or None
status = topics.status_topic(fleet, agent)
client = MqttClient(url, fleet + "-" + agent, username=agent, password=password, protocol=protocol,
                    will=(status, offline_status(agent)), keepalive_s=60)
client.start()
client.publish(status, encode_status(AgentStatus(agent, True, ("accel",), {"enc/accel": "s1"})),
               retain=True)
client.flush(10)
print("ready", flush=True)
time.sleep(120)
"""


def test_sigkilled_agent_shows_offline_through_its_last_will(broker: Broker) -> None:
    # Prepare: an observer folding status messages into a neighbour table
    table = NeighbourTable(FLEET, {"a1": ["a3"], "a3": ["a1"]})
    observer = broker.client("a1", f"{FLEET}-a1", on_message=table.observe)
    observer.start()
    observer.subscribe(topics.status_filter(FLEET))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, broker.url, FLEET, "a3", str(broker.protocol)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert child.stdin is not None
        child.stdin.write((broker.password("a3") or "") + "\n")  # not on the command line
        child.stdin.close()
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert wait_for(lambda: table.live_neighbours("a1", "enc/accel", "s1") == {"a3"}, 10)
        # Execute
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        # Assert
        assert wait_for(lambda: "a3" not in table.online_agents(), 15)
        status = table.status("a3")
        assert status is not None and status.online is False
        assert table.live_neighbours("a1", "enc/accel", "s1") == set()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        observer.stop(publish_will=False)


def test_stop_publishes_offline_status_and_flush_waits_for_acks(broker: Broker) -> None:
    table = NeighbourTable(FLEET, {"a1": ["a2"]})
    observer = broker.client("a1", f"{FLEET}-a1", on_message=table.observe).start()
    observer.subscribe(topics.status_filter(FLEET))
    agent = broker.client("a2", f"{FLEET}-a2",
                          will=(topics.status_topic(FLEET, "a2"), offline_status("a2"))).start()
    try:
        agent.publish(topics.status_topic(FLEET, "a2"),
                      encode_status(AgentStatus("a2", True, (), {"head/R": "h"})), retain=True)
        for i in range(50):
            agent.publish(topics.metrics_topic(FLEET, "a2"), b"x" * 1000 * i)
        assert agent.flush(20)
        assert wait_for(lambda: table.live_neighbours("a1", "head/R", "h") == {"a2"}, 10)
        agent.stop()
        assert wait_for(lambda: table.online_agents() == set(), 10)
    finally:
        agent.stop()
        observer.stop(publish_will=False)


def test_unreachable_broker_fails_with_a_clear_error() -> None:
    from broker.embedded import free_port

    port = free_port()
    client = MqttClient(f"mqtt://127.0.0.1:{port}", "lonely")
    with pytest.raises(ConnectionError, match=rf"not connected after 0.5 s \(nothing listens on "
                                              rf"127.0.0.1 port {port} \(connection refused\)\)"):
        client.start(timeout_s=0.5)
    unknown = MqttClient("mqtt://no-such-broker.invalid:1883", "lost")
    with pytest.raises(ConnectionError, match=r"the host name 'no-such-broker\.invalid' does not resolve"):
        unknown.start(timeout_s=0.5)


def test_tls_to_a_plain_listener_says_so(tmp_path: Path) -> None:
    # Prepare: a real CA and client certificate, and the plain Mosquitto on 127.0.0.1:1883
    from broker.certs import write_pki
    from broker.client import TlsFiles

    pki = write_pki(tmp_path / "pki", ["a0"])
    cert, key = pki.clients["a0"]
    client = MqttClient("mqtts://127.0.0.1:1883", "tls-on-plain",
                        tls=TlsFiles(str(pki.ca_cert), str(cert), str(key)))
    # Execute / Assert: one line naming the likely cause, well before the timeout
    with pytest.raises(ConnectionError, match=r"(did not answer|closed the connection during) "
                                              r"the TLS handshake .*plain mqtt:// listener on "
                                              r"port 1883"):
        client.start(timeout_s=30)


@pytest.mark.parametrize("url,match", [("http://h:1", "expected mqtt"), ("mqtt://", "no host"),
                                       ("mqtt://h:99999", "port"), ("mqtt://h:1/x", "path")])
def test_bad_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_broker_url(url)


def test_url_parsing() -> None:
    assert parse_broker_url("mqtt://h") == parse_broker_url("mqtt://h:1883")
    address = parse_broker_url("mqtts://u%40x:p%3Aw@h:9")
    assert (address.host, address.port, address.tls, address.username, address.password) == \
        ("h", 9, True, "u@x", "p:w")


def test_publish_from_many_threads_loses_nothing(broker: Broker) -> None:
    received: list[bytes] = []
    lock = threading.Lock()

    def record(topic: str, payload: bytes) -> None:
        with lock:
            received.append(payload)

    # the operator: agents may not read each other's metrics (the generated ACL)
    sink = broker.client("operator", f"{FLEET}-operator", on_message=record).start()
    source = broker.client("a1", f"{FLEET}-a1").start()
    try:
        sink.subscribe(topics.metrics_topic(FLEET, "a1"))
        assert sink.wait_subscribed(5)

        def work(worker: int) -> None:
            for i in range(100):
                source.publish(topics.metrics_topic(FLEET, "a1"), f"{worker}:{i}".encode())

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert source.flush(10)
        expected = {f"{w}:{i}".encode() for w in range(4) for i in range(100)}
        # QoS 1 is at-least-once: a broker may deliver a message twice, never zero times
        assert wait_for(lambda: set(received) == expected, 10), (
            sorted(expected - set(received))[:5], sorted(set(received) - expected)[:5], len(received))
        assert len(received) >= 400
        assert source.counters.sent.messages == 400
    finally:
        source.stop(publish_will=False)
        sink.stop(publish_will=False)


def test_client_socket_has_tcp_nodelay(broker: Broker) -> None:
    import socket

    with broker.client("a1", f"{FLEET}-nodelay") as client:
        sock = client._paho.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
