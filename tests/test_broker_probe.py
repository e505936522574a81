"""Refused publishes are loud, against real brokers: the publish probe passes where publishing works
(amqtt, Mosquitto), names the topic and the cause where the ACL or the packet size stops it, and MQTT 5
clients size their chunks to the broker's Maximum Packet Size so large updates still get through."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from broker import topics
from broker.embedded import EmbeddedBroker
from broker.envelope import Signer
from broker.exchange import Update, UpdateReceiver, UpdateSender
from broker.probe import PublishProbeError, fit_chunk_bytes, prove_publish_path
from tests.broker_support import private_mosquitto

FLEET, BRANCH, SIG = "probe", "enc/accel", "s"
KEY = b"probe-fleet-key-0123"
AGENTS = ["a1", "a2", "a3", "a4"]


@pytest.fixture(scope="module")
def amqtt_url() -> Iterator[str]:
    with EmbeddedBroker() as broker:
        yield broker.url


def _tools(agent: str) -> tuple[Signer, UpdateSender, list[str]]:
    signer = Signer(FLEET, agent, KEY)
    sender = UpdateSender(FLEET, agent, "fp32", hmac_key=KEY)
    return signer, sender, [topics.update_topic(FLEET, agent, BRANCH)]


def test_probe_passes_on_amqtt(amqtt_url: str) -> None:
    from broker.client import MqttClient

    signer, sender, update_topics = _tools("a1")
    with MqttClient(amqtt_url, f"{FLEET}-a1", username="a1") as client:
        assert prove_publish_path(client, signer, sender, update_topics, timeout_s=5) == 256 * 1024
        assert client.max_packet_bytes is None  # MQTT 3.1.1 cannot say
        assert client.refusals == [] and client.stray_messages == 0


def test_auto_protocol_speaks_mqtt5_where_it_can(amqtt_url: str, tmp_path: Path) -> None:
    from broker.client import MqttClient

    with MqttClient(amqtt_url, f"{FLEET}-auto", protocol=0) as client:  # amqtt: 3.1.1 only
        assert client.protocol == 4 and client.is_connected and not client.counters.mqtt5
    with private_mosquitto(tmp_path, FLEET, AGENTS) as broker:
        with broker.client("a1", protocol=0) as client:
            assert client.protocol == 5 and client.max_packet_bytes is not None
        wrong = broker.client("a1", "y", protocol=0, password="wrong")
        with pytest.raises(ConnectionError, match="Not authorized"):  # only the protocol falls back
            wrong.start(timeout_s=2)
        assert wrong.protocol == 5


@pytest.mark.parametrize("protocol", [4, 5])
def test_probe_passes_on_mosquitto_and_fails_loudly_under_the_acl(tmp_path: Path, protocol: int) -> None:
    with private_mosquitto(tmp_path, FLEET, AGENTS) as broker:
        signer, sender, update_topics = _tools("a4")
        with broker.client("a4", protocol=protocol) as client:
            prove_publish_path(client, signer, sender, update_topics, timeout_s=5)
        # a3's credentials on a4's topics (a config naming the wrong user, or an impostor)
        with broker.client("a3", protocol=protocol) as client, \
                pytest.raises(PublishProbeError) as info:
            prove_publish_path(client, signer, sender, update_topics, timeout_s=2)
        message = str(info.value)
        assert "\n" not in message
        assert f"publish probe on {topics.probe_topic(FLEET, 'a4')}" in message
        if protocol == 5:  # the broker said so
            assert "refused publish" in message and "Not authorized" in message
        assert "ACL" in message and "'a3'" in message


def test_mqtt5_chunks_fit_a_small_max_packet_size(tmp_path: Path) -> None:
    # Prepare: a broker accepting at most 64 KiB packets, a 1 MB update
    limit = 64 * 1024
    n = 250_000
    vector = np.random.default_rng(0).normal(size=n).astype(np.float32)
    with private_mosquitto(tmp_path, FLEET, AGENTS, max_packet_bytes=limit) as broker:
        got: list[Update] = []
        arrived = threading.Event()
        receiver = UpdateReceiver(FLEET, lambda b: (SIG, n), hmac_key=KEY)

        def on_message(topic: str, payload: bytes) -> None:
            update = receiver.feed(topic, payload)
            if update is not None:
                got.append(update)
                arrived.set()

        signer, sender, update_topics = _tools("a1")
        with broker.client("a2", protocol=5, on_message=on_message) as sink, \
                broker.client("a1", protocol=5) as source:
            sink.subscribe(topics.updates_filter(FLEET, "a1"))
            assert sink.wait_subscribed(5)
            assert source.max_packet_bytes == limit
            # Execute
            chunk_bytes = prove_publish_path(source, signer, sender, update_topics, timeout_s=5)
            messages = sender.encode(0, BRANCH, SIG, vector)
            source.publish_many(messages)
            assert source.flush(30) and arrived.wait(30)
            # Assert
            assert chunk_bytes <= limit - len(update_topics[0]) - 5
            assert max(len(p) for _, p in messages) <= chunk_bytes and len(messages) >= 16
            np.testing.assert_array_equal(got[0].vector, vector)
            assert source.refusals == [] and source.is_connected
            # one byte over the limit is refused before it leaves (the broker would drop us)
            with pytest.raises(ValueError, match="Maximum Packet Size of 65536"):
                source.publish(topics.metrics_topic(FLEET, "a1"), bytes(limit))


def test_mqtt311_probe_names_the_packet_size(tmp_path: Path) -> None:
    with private_mosquitto(tmp_path, FLEET, AGENTS, max_packet_bytes=64 * 1024) as broker:
        signer, sender, update_topics = _tools("a1")
        client = broker.client("a1", protocol=4).start()
        try:
            assert fit_chunk_bytes(client, sender, update_topics) == 256 * 1024  # nothing to go by
            with pytest.raises(PublishProbeError) as info:
                prove_publish_path(client, signer, sender, update_topics, timeout_s=3)
        finally:
            client.stop(publish_will=False, flush_timeout_s=0)
        message = str(info.value)
        assert topics.probe_topic(FLEET, "a1") in message and "max_packet_size" in message
        assert "\n" not in message
