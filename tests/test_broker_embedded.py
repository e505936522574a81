"""Embedded amqtt broker: starts on a free loopback port, restarts on the same port, and clients
reconnect and resubscribe by themselves."""

from __future__ import annotations

import threading

import pytest

from broker.client import MqttClient
from broker.embedded import EmbeddedBroker, amqtt_config, free_port
from tests.broker_support import wait_for


def test_restart_on_the_same_port_with_client_reconnect_and_resubscribe() -> None:
    # Prepare
    broker = EmbeddedBroker().start()
    received: list[bytes] = []
    got = threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append(payload)
        got.set()

    listener = MqttClient(broker.url, "listener", on_message=on_message, reconnect_min_s=0.1,
                          reconnect_max_s=0.5)
    try:
        url, port = broker.url, broker.port
        assert url == f"mqtt://127.0.0.1:{port}" and port > 0
        listener.start()
        listener.subscribe("parse/emb/control")
        assert listener.wait_subscribed(5)
        # Execute: stop the broker, start it again on the same port
        broker.stop()
        assert not broker.running
        assert wait_for(lambda: not listener.is_connected, 10)
        broker.start()
        assert broker.port == port and broker.url == url
        assert wait_for(lambda: listener.connect_count == 2 and listener.is_connected, 15)
        assert listener.wait_subscribed(5)
        with MqttClient(broker.url, "talker") as talker:
            talker.publish("parse/emb/control", b"after restart")
            assert talker.flush(5)
        # Assert: the subscription came back without the caller doing anything
        assert got.wait(10)
        assert received == [b"after restart"]
    finally:
        listener.stop(publish_will=False, flush_timeout_s=0)
        broker.stop()


def test_fixed_port_and_busy_port() -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as broker:
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        with pytest.raises(RuntimeError, match=r"address already in use|Errno 98"):
            EmbeddedBroker(port=port, startup_timeout_s=5).start()


def test_url_before_start_is_an_error_and_config_binds_loopback() -> None:
    with pytest.raises(RuntimeError, match="after start"):
        _ = EmbeddedBroker().url
    config = amqtt_config("127.0.0.1", 1234)
    assert config["listeners"]["default"]["bind"] == "127.0.0.1:1234"
    assert list(config["plugins"]) == ["amqtt.plugins.authentication.AnonymousAuthPlugin"]


def test_client_drops_retained_messages_it_did_not_subscribe_to() -> None:
    # amqtt replays retained messages matching other clients' subscriptions to new clients
    with EmbeddedBroker() as broker:
        watcher = MqttClient(broker.url, "watcher").start()
        watcher.subscribe("parse/q/agents/+/status")
        assert watcher.wait_subscribed(5)
        with MqttClient(broker.url, "a1") as publisher:
            publisher.publish("parse/q/agents/a1/status", b"retained", retain=True)
            assert publisher.flush(5)
        seen: list[str] = []
        late = MqttClient(broker.url, "late", on_message=lambda t, p: seen.append(t)).start()
        try:
            late.subscribe("parse/q/metrics/a1")
            assert late.wait_subscribed(5)
            with MqttClient(broker.url, "a1") as publisher:
                publisher.publish("parse/q/metrics/a1", b"{}")
                assert publisher.flush(5)
            assert wait_for(lambda: seen == ["parse/q/metrics/a1"], 5)
            assert late.counters.received.messages == 1
        finally:
            late.stop(publish_will=False)
            watcher.stop(publish_will=False)


def test_flush_waits_for_acks_across_a_broker_outage() -> None:
    broker = EmbeddedBroker().start()
    client = MqttClient(broker.url, "patient", reconnect_min_s=0.1, reconnect_max_s=0.5).start()
    try:
        broker.stop()
        assert wait_for(lambda: not client.is_connected, 10)
        client.publish("parse/emb/metrics/a1", b"queued while the broker is down")
        assert not client.flush(0.3)  # nobody to acknowledge it yet
        broker.start()
        assert client.flush(15)  # paho resent it after reconnecting; the PUBACK arrived
        assert client.connect_count == 2
    finally:
        client.stop(publish_will=False, flush_timeout_s=0)
        broker.stop()
