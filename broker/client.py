"""A thin paho-mqtt 2.x client: QoS 1, resubscribe on reconnect, last will, byte counters, flush.

Works with MQTT 3.1.1 (amqtt, the default protocol) and MQTT 5 (Mosquitto; `protocol=5`).
paho's network thread runs the callbacks; `publish` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from broker.counters import ByteCounters

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes], None]
DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS: the CA to trust, and this client's certificate and key (optional)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens, parsed from `mqtt://[user:pass@]host[:port]` or `mqtts://…`."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker url {url!r}: expected mqtt://host:port or mqtts://host:port")
    if not parts.hostname:
        raise ValueError(f"broker url {url!r}: no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"broker url {url!r}: port is not a number in 1..65535") from None
    if parts.path not in ("", "/"):
        raise ValueError(f"broker url {url!r}: unexpected path {parts.path!r}")
    return BrokerAddress(parts.hostname, port, scheme in ("mqtts", "ssl"),
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None)


def _set_nodelay(client: paho.Client, userdata: object, sock: socket.socket) -> None:
    # Chunks are written back to back; Nagle would hold small tails (PUBACKs, last chunks).
    with contextlib.suppress(OSError, AttributeError):  # unix/websocket sockets: no TCP options
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttClient:
    """One connection to a broker. Use as a context manager, or call start()/stop()."""

    def __init__(self, url: str, client_id: str, *, on_message: MessageCallback | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: TlsFiles | None = None, protocol: int = 4, keepalive_s: int = 30,
                 will: tuple[str, bytes] | None = None, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, max_inflight: int = 64) -> None:
        address = parse_broker_url(url)
        if protocol not in (4, 5):
            raise ValueError(f"protocol: expected 4 (MQTT 3.1.1) or 5 (MQTT 5), got {protocol}")
        self.address = address
        self.client_id = client_id
        self.protocol = protocol
        self.keepalive_s = keepalive_s
        self.will = will
        self.counters = ByteCounters(mqtt5=protocol == 5)
        self.connect_count = 0
        self.stray_messages = 0  # messages on topics we never subscribed to (dropped)
        self.last_connect_error: str | None = None
        self._on_message = on_message
        self._subscriptions: dict[str, int] = {}
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._acked = threading.Condition()
        self._published_total = 0
        self._acked_total = 0
        self._subacks = threading.Condition()
        self._pending_subscribe_mids: set[int] = set()
        self._early_subacks: set[int] = set()
        self._started = False
        version = MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311
        self._paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                                 clean_session=True if protocol == 4 else None)
        self._paho.max_inflight_messages_set(max_inflight)
        self._paho.max_queued_messages_set(0)
        self._paho.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        username = username if username is not None else address.username
        password = password if password is not None else address.password
        if username is not None:
            self._paho.username_pw_set(username, password)
        if address.tls or tls is not None:
            files = tls or TlsFiles()
            self._paho.tls_set(ca_certs=files.ca_file, certfile=files.cert_file,
                               keyfile=files.key_file)
        if will is not None:
            self._paho.will_set(will[0], will[1], qos=1, retain=True)
        self._paho.on_socket_open = _set_nodelay
        self._paho.on_connect = self._handle_connect
        self._paho.on_disconnect = self._handle_disconnect
        self._paho.on_message = self._handle_message
        self._paho.on_publish = self._handle_publish
        self._paho.on_subscribe = self._handle_subscribe

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0, wait: bool = True) -> MqttClient:
        """Connect in the background (retrying with backoff); with `wait`, block until connected."""
        if not self._started:
            self._started = True
            self._paho.connect_async(self.address.host, self.address.port, self.keepalive_s)
            self._paho.loop_start()
        if wait and not self.wait_connected(timeout_s):
            detail = self.last_connect_error or "no CONNACK"
            self.stop(publish_will=False, flush_timeout_s=0)
            raise ConnectionError(f"broker {self.address.url}: not connected after {timeout_s:g} s "
                                  f"({detail})")
        return self

    def stop(self, publish_will: bool = True, flush_timeout_s: float = 5.0) -> None:
        """Flush, publish the will payload ourselves (a clean disconnect suppresses it), disconnect."""
        if not self._started:
            return
        if self.is_connected:
            if publish_will and self.will is not None:
                self.publish(self.will[0], self.will[1], retain=True)
            if flush_timeout_s > 0:
                self.flush(flush_timeout_s)
        self._paho.disconnect()
        self._paho.loop_stop()
        self._started = False
        self._connected.clear()

    def __enter__(self) -> MqttClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once a CONNACK with success arrived (within `timeout_s`)."""
        return self._connected.wait(timeout_s)

    # --- subscribe / publish ------------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (when connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self.is_connected:
            self._track_subscribe(self._paho.subscribe(topic_filter, qos))

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """Wait until every subscription sent so far is acknowledged (SUBACK)."""
        with self._subacks:
            return self._subacks.wait_for(lambda: not self._pending_subscribe_mids, timeout_s)

    def _track_subscribe(self, result: tuple[MQTTErrorCode, int | None]) -> None:
        rc, mid = result
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected: on_connect will subscribe again
        with self._subacks:
            # the SUBACK may have been handled before paho's subscribe() returned
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
            else:
                self._pending_subscribe_mids.add(mid)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
        if self.is_connected:
            self._paho.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue one message; QoS 1 messages survive reconnects (paho resends them)."""
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish on {topic!r}: {paho.error_string(info.rc)}")
        with self._acked:
            self._published_total += 1
        self.counters.record_sent(topic, len(payload), qos)

    def publish_many(self, messages: Iterable[tuple[str, bytes]], qos: int = 1) -> int:
        """Publish (topic, payload) pairs in order; return how many."""
        count = 0
        for topic, payload in messages:
            self.publish(topic, payload, qos=qos)
            count += 1
        return count

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every message published so far is acknowledged (PUBACK, or sent for QoS 0)."""
        with self._acked:
            target = self._published_total
            return self._acked.wait_for(lambda: self._acked_total >= target, timeout_s)

    # --- paho callbacks (network thread) ----------------------------------------------------------

    def _handle_connect(self, client: paho.Client, userdata: object, flags: object,
                        reason_code: object, properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            self.last_connect_error = str(reason_code)
            log.warning("broker %s refused connection: %s", self.address.url, reason_code)
            return
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        with self._subacks:
            self._pending_subscribe_mids.clear()  # lost with the old connection
        if subscriptions:
            self._track_subscribe(client.subscribe(subscriptions))
        self.connect_count += 1
        self._connected.set()
        log.debug("connected to %s as %s (%d)", self.address.url, self.client_id, self.connect_count)

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: object,
                           reason_code: object, properties: object) -> None:
        self._connected.clear()
        if self._started:
            log.info("disconnected from %s (%s); reconnecting", self.address.url, reason_code)

    def _handle_subscribe(self, client: paho.Client, userdata: object, mid: int,
                          reason_codes: object, properties: object) -> None:
        with self._subacks:
            if mid in self._pending_subscribe_mids:
                self._pending_subscribe_mids.discard(mid)
            else:
                self._early_subacks.add(mid)
            self._subacks.notify_all()

    def _handle_publish(self, client: paho.Client, userdata: object, mid: int,
                        reason_code: object, properties: object) -> None:
        with self._acked:
            self._acked_total += 1
            self._acked.notify_all()

    def _handle_message(self, client: paho.Client, userdata: object,
                        message: paho.MQTTMessage) -> None:
        topic = message.topic
        with self._lock:
            filters = list(self._subscriptions)
        if not any(paho.topic_matches_sub(f, topic) for f in filters):
            # amqtt 0.12 replays retained messages matching *other* clients' subscriptions to a
            # client that connects; drop anything we did not subscribe to
            self.stray_messages += 1
            log.debug("dropping message on unsubscribed topic %s", topic)
            return
        self.counters.record_received(topic, len(message.payload), message.qos)
        if self._on_message is None:
            return
        try:
            self._on_message(topic, message.payload)
        except Exception:  # the callback's bug must not stop the network loop
            log.exception("message callback failed on %s", topic)
