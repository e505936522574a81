"""A thin paho-mqtt 2.x client: QoS 1, resubscribe on reconnect, last will, byte counters, flush.

Works with MQTT 3.1.1 (amqtt, the default protocol) and MQTT 5 (Mosquitto; `protocol=5`).
paho's network thread runs the callbacks; `publish` may be called from any thread.

Refused publishes are loud. MQTT 3.1.1 has no negative acknowledgement: a broker's ACL drops a
publish and still acknowledges it. On MQTT 5 the client reads PUBACK and SUBACK reason codes and
DISCONNECT reasons into `refusals` (`raise_for_refusals` turns the first into one line), and the
broker's Maximum Packet Size from CONNACK (`max_packet_bytes`, `max_payload_bytes`): a publish
above it raises at once instead of making the broker drop the connection. On either protocol
`echo` publishes a message and waits for it to come back, which is what `broker.probe` builds on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker.address import DEFAULT_PORTS, BrokerAddress, TlsFiles, parse_broker_url
from broker.carrier import CarrierWatch, interface_of
from broker.counters import ByteCounters, publish_overhead
from broker.reach import reach_problem, tls_problem
from broker.refusals import BrokerRefusedError, Refusal, RefusalLog, describe_refusal

# Re-exported: callers import the connection vocabulary from here.
__all__ = ["DEFAULT_PORTS", "BrokerAddress", "BrokerRefusedError", "Inbound", "MqttClient", "Refusal",
           "TlsFiles", "describe_refusal", "parse_broker_url"]

log = logging.getLogger(__name__)

# protocol=0: how long an MQTT 5 CONNECT may go unanswered before 3.1.1 is tried instead.
AUTO_CONNACK_S = 3.0
# TLS: how long to wait for a connection before checking the handshake ourselves.
TLS_CHECK_S = 2.0
# After a carrier return (broker.carrier) the link is back: retry the connection every 50 ms
# (not the configured back-off) for up to 5 s.
CARRIER_RETRY_S = 0.05
CARRIER_RETRY_FOR_S = 5.0
# MQTT 5 Will Delay Interval (s): an agent that is gone shows offline this much later, one that
# reconnected at once (a link that came back) not at all.
WILL_DELAY_S = 2
# CONNACK refusals that retrying with the same login cannot change (MQTT 3.1.1 and 5 wording).
FINAL_REFUSALS = frozenset({"Bad user name or password", "Not authorized",
                            "Bad authentication method", "Client identifier not valid"})


class Inbound(NamedTuple):
    """One received message with the flags receivers need."""

    topic: str
    payload: bytes
    retained: bool  # the broker delivered a stored retained message (MQTT retain flag)
    qos: int


MessageCallback = Callable[[str, bytes], None]
InboundCallback = Callable[[Inbound], None]
Will = tuple[str, bytes]


def _set_nodelay(sock: Any) -> None:
    # Chunks are written back to back; Nagle would hold small tails (PUBACKs, last chunks).
    with contextlib.suppress(OSError, AttributeError):  # unix/websocket sockets: no TCP options
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttClient:
    """One connection to a broker. Use as a context manager, or call start()/stop().

    Parameters
    ----------
    url : str
        `mqtt://[user:pass@]host[:port]` or `mqtts://...`.
    client_id : str
        MQTT client id (unique per broker).
    on_message : callable, optional
        `(topic, payload)` for each message on a subscribed topic.
    on_inbound : callable, optional
        `(Inbound)` instead, with the retain flag and QoS (at most one of the two).
    username, password : str, optional
        Credentials (default: from the URL).
    tls : TlsFiles, optional
        CA to trust and client certificate; `mqtts://` alone uses the system CAs. The server's
        host name is checked against its certificate.
    protocol : int
        4 (MQTT 3.1.1), 5 (MQTT 5: reason codes and the broker's packet limit are read), or 0:
        MQTT 5 when the broker speaks it, else 3.1.1 (decided in `start`; see `protocol` after).
    keepalive_s : int
        MQTT keepalive.
    will : (topic, payload) or callable returning it, optional
        Last will, retained; a callable is asked again before every (re)connect, so that a signed
        will carries a fresh sequence number.
    reconnect_min_s, reconnect_max_s : float
        Reconnect backoff.
    max_inflight : int
        QoS 1 messages in flight.
    reconnect_on_carrier : bool
        Reconnect at once when the carrier of the interface reaching the broker comes back
        (broker.carrier: TCP's back-off would hold queued data for seconds). On MQTT 5 the
        session outlives a connection by `keepalive_s` (Session Expiry Interval), so the broker
        hands the new connection the old one's subscriptions and unacknowledged messages.
    """

    def __init__(self, url: str, client_id: str, *, on_message: MessageCallback | None = None,
                 on_inbound: InboundCallback | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: TlsFiles | None = None, protocol: int = 4, keepalive_s: int = 30,
                 will: Will | Callable[[], Will] | None = None, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, max_inflight: int = 64,
                 reconnect_on_carrier: bool = True) -> None:
        address = parse_broker_url(url)
        if protocol not in (0, 4, 5):
            raise ValueError(f"protocol: expected 4 (MQTT 3.1.1), 5 (MQTT 5) or 0 (5, else 3.1.1), "
                             f"got {protocol}")
        if on_message is not None and on_inbound is not None:
            raise ValueError("on_message, on_inbound: give at most one")
        self.address = address
        self.client_id = client_id
        self._auto = protocol == 0
        self.protocol = 5 if protocol == 0 else protocol
        self.keepalive_s = keepalive_s
        self.will = will
        self.counters = ByteCounters(mqtt5=self.protocol == 5)
        self.connect_count = 0
        self.stray_messages = 0  # messages on topics we never subscribed to (dropped)
        self.last_connect_error: str | None = None
        self.last_disconnect_reason: str | None = None
        self._max_packet_bytes: int | None = None
        self._subscribe_filters: dict[int, list[str]] = {}
        self._echo_waiters: dict[str, tuple[bytes, threading.Event]] = {}
        self._on_message = on_message
        self._on_inbound = on_inbound
        self._subscriptions: dict[str, int] = {}
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._acked = threading.Condition()
        self._published_total = 0
        self._acked_total = 0
        self._subacks = threading.Condition()
        self._pending_subscribe_mids: set[int] = set()
        self._early_subacks: dict[int, list[Any]] = {}
        self._started = False
        self._connack = threading.Event()  # any CONNACK, success or refusal
        self.username = username if username is not None else address.username
        self.refusal_log = RefusalLog(self.username)
        self._password = password if password is not None else address.password
        self._tls = tls if tls is not None else (TlsFiles() if address.tls else None)
        self._paho_settings = (max_inflight, reconnect_min_s, reconnect_max_s)
        self._carrier = CarrierWatch(self._carrier_returned) if reconnect_on_carrier else None
        self._paho = self._make_paho()

    def _make_paho(self) -> paho.Client:
        version = MQTTProtocolVersion.MQTTv5 if self.protocol == 5 else MQTTProtocolVersion.MQTTv311
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=version,
                             clean_session=True if self.protocol == 4 else None)
        max_inflight, reconnect_min_s, reconnect_max_s = self._paho_settings
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self._tls is not None:
            client.tls_set(ca_certs=self._tls.ca_file, certfile=self._tls.cert_file,
                           keyfile=self._tls.key_file)
        client.on_pre_connect = self._handle_pre_connect
        client.on_socket_open = self._handle_socket_open
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        return client

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0, wait: bool = True) -> MqttClient:
        """Connect in the background (retrying with backoff); with `wait`, block until connected.

        With `protocol=0` (auto) and `wait`, a broker that answers MQTT 5 with "Unsupported protocol
        version" (amqtt) is asked again with MQTT 3.1.1.

        Raises
        ------
        ConnectionError
            With `wait`, when no successful CONNACK arrived within `timeout_s` (the broker's
            refusal reason, e.g. "Not authorized", in the message).
        """
        if not self._started:
            self._started = True
            self._connack.clear()
            self.last_connect_error = None
            self._paho.connect_async(self.address.host, self.address.port, self.keepalive_s,
                                     properties=self._connect_properties())
            self._paho.loop_start()
        if wait and self._auto and self.protocol == 5:
            # amqtt answers an MQTT 5 CONNECT carrying a username with silence (no CONNACK):
            # no answer within AUTO_CONNACK_S counts as "MQTT 3.1.1 only" too.
            answered = self._connack.wait(min(timeout_s, AUTO_CONNACK_S))
            if not self.is_connected and (
                    not answered or self.last_connect_error == "Unsupported protocol version"):
                self.stop(publish_will=False, flush_timeout_s=0)
                self.protocol, self.counters = 4, ByteCounters(mqtt5=False)
                self._paho = self._make_paho()
                log.info("broker %s speaks MQTT 3.1.1 only; reconnecting with it", self.address.url)
                return self.start(timeout_s, wait)
        if wait:
            self._wait_connected_or_raise(timeout_s)
        return self

    def _connect_properties(self) -> Properties | None:
        """MQTT 5: a session that outlives its connection by one keepalive.

        paho reconnects with Clean Start 0; with a Session Expiry Interval of 0 (the default)
        the broker would end the session with the old connection, and the messages it had sent
        on it unacknowledged (a neighbour's update, during an outage) would be lost. One
        keepalive covers a link that returns before the broker gives up on the old connection;
        the first connection of a process still starts clean.
        """
        if self.protocol != 5:
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.keepalive_s
        return properties

    def _will_properties(self) -> Properties | None:
        """MQTT 5: publish the will only if no new connection resumes the session within WILL_DELAY_S.

        A reconnect after a carrier return takes the session over from a connection the broker
        still holds; without a delay the broker would publish that connection's will ("offline")
        although the agent is back at once (MQTT 5, 3.1.3.2.2: a will is not sent when a new
        connection to the session is made before the Will Delay Interval has passed).
        """
        if self.protocol != 5:
            return None
        properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
        properties.WillDelayInterval = WILL_DELAY_S
        return properties

    def _wait_connected_or_raise(self, timeout_s: float) -> None:
        """Wait for the connection; stop early on a refusal that retrying will not change.

        paho retries in silence: a refused login or a failed TLS handshake would otherwise cost
        the whole timeout and end as "no CONNACK". With TLS, after `TLS_CHECK_S` the handshake
        is tried once by hand (`tls_problem`) to name what fails.
        """
        started = time.monotonic()
        problem = None
        tls_checked = self._tls is None
        while not self.wait_connected(0.1):
            waited = time.monotonic() - started
            if self.last_connect_error in FINAL_REFUSALS:
                problem = (f"the broker refused the login ({self.last_connect_error}): it does not "
                           f"accept the credentials of "
                           f"{f'MQTT user {self.username!r}' if self.username else 'an anonymous client'}")
                break
            if not tls_checked and waited >= TLS_CHECK_S:
                tls_checked = True
                assert self._tls is not None
                tls = tls_problem(self.address, self._tls)
                if tls is not None:
                    problem = f"TLS handshake failed: {tls}"
                    break
            if waited >= timeout_s:
                break
        if self.is_connected:
            return
        self.stop(publish_will=False, flush_timeout_s=0)
        if problem is not None:
            raise ConnectionError(f"broker {self.address.url}: {problem}")
        detail = self.last_connect_error or reach_problem(self.address) or "no CONNACK"
        raise ConnectionError(f"broker {self.address.url}: not connected after {timeout_s:g} s "
                              f"({detail})")

    def stop(self, publish_will: bool = True, flush_timeout_s: float = 5.0) -> None:
        """Flush, publish the will payload ourselves (a clean disconnect suppresses it), disconnect."""
        if not self._started:
            return
        if self.is_connected:
            if publish_will and self.will is not None:
                topic, payload = self._current_will()
                self.publish(topic, payload, retain=True)
            if flush_timeout_s > 0:
                self.flush(flush_timeout_s)
        if self._carrier is not None:
            self._carrier.stop()
        self._paho.disconnect()
        self._paho.loop_stop()
        self._started = False
        self._connected.clear()

    def __enter__(self) -> MqttClient:
        """Start (connect and wait)."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop (offline status, flush, disconnect)."""
        self.stop()

    @property
    def is_connected(self) -> bool:
        """Whether a CONNACK with success arrived and the connection has not dropped since."""
        return self._connected.is_set()

    @property
    def carrier_returns(self) -> int:
        """How often the link to the broker came back and the client reconnected at once."""
        return self._carrier.returns if self._carrier is not None else 0

    @property
    def max_packet_bytes(self) -> int | None:
        """The broker's Maximum Packet Size from its MQTT 5 CONNACK.

        None when it sets none, or on MQTT 3.1.1, which cannot say.
        """
        return self._max_packet_bytes

    def max_payload_bytes(self, topic: str, qos: int = 1) -> int | None:
        """Largest payload a PUBLISH on `topic` may carry under `max_packet_bytes`.

        None when no limit is known. The overhead is computed for the largest remaining-length
        encoding the packet could need.
        """
        limit = self._max_packet_bytes
        if limit is None:
            return None
        return max(0, limit - publish_overhead(topic, limit, qos, self.protocol == 5))

    @property
    def refusals(self) -> list[Refusal]:
        """The most recent refusals (up to 100; `refused_count` counts all)."""
        return self.refusal_log.refusals

    @property
    def refused_count(self) -> int:
        """Refusals received so far."""
        return self.refusal_log.count

    def raise_for_refusals(self) -> None:
        """Raise BrokerRefusedError naming the first refusal recorded so far, if any."""
        first = self.refusal_log.first()
        if first is not None:
            raise BrokerRefusedError(describe_refusal(first, self.username))

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a successful CONNACK; return whether it arrived."""
        return self._connected.wait(timeout_s)

    # --- subscribe / publish ------------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (when connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self.is_connected:
            self._track_subscribe(self._paho.subscribe(topic_filter, qos), [topic_filter])

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """Wait until every subscription sent so far is acknowledged (SUBACK)."""
        with self._subacks:
            return self._subacks.wait_for(lambda: not self._pending_subscribe_mids, timeout_s)

    def _track_subscribe(self, result: tuple[MQTTErrorCode, int | None], filters: list[str]) -> None:
        rc, mid = result
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected: on_connect will subscribe again
        with self._subacks:
            # the SUBACK may have been handled before paho's subscribe() returned
            early = self._early_subacks.pop(mid, None)
            if early is None:
                self._pending_subscribe_mids.add(mid)
                self._subscribe_filters[mid] = filters
        if early is not None:
            self.refusal_log.suback(filters, early)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving `topic_filter` (and do not subscribe to it again after a reconnect)."""
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
        if self.is_connected:
            self._paho.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue one message; QoS 1 messages survive reconnects (paho resends them).

        Raises
        ------
        ValueError
            When the PUBLISH packet would exceed the broker's Maximum Packet Size (MQTT 5): the
            broker would drop the connection and paho would resend the packet forever.
        RuntimeError
            When paho refuses the message (e.g. queue full).
        """
        limit = self._max_packet_bytes
        if limit is not None:
            size = len(payload) + publish_overhead(topic, len(payload), qos, self.protocol == 5)
            if size > limit:
                raise ValueError(f"publish on {topic}: a {size}-byte packet exceeds the broker's "
                                 f"Maximum Packet Size of {limit} bytes")
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish on {topic!r}: {paho.error_string(info.rc)}")
        if self.protocol == 5 and qos > 0:  # MQTT 3.1.1 PUBACKs carry no reason
            self.refusal_log.published(info.mid, topic)
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

    def echo(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> bool:
        """Publish `payload` on `topic` and wait until the broker delivers it back to us.

        Subscribes to `topic` for the duration (unless already subscribed). True when the exact
        bytes came back within `timeout_s`; False when they did not (an ACL that denies the
        publish or the subscription, a packet the broker dropped, a lost connection; see
        `refusals` and `is_connected` for the reason a broker gave).
        """
        arrived = threading.Event()
        with self._lock:
            temporary = topic not in self._subscriptions
            self._echo_waiters[topic] = (payload, arrived)
        try:
            if temporary:
                self.subscribe(topic)
                if not self.wait_subscribed(timeout_s):
                    return False
            self.publish(topic, payload)
            return arrived.wait(timeout_s)
        finally:
            with self._lock:
                self._echo_waiters.pop(topic, None)
            if temporary:
                self.unsubscribe(topic)

    def _current_will(self) -> Will:
        will = self.will
        assert will is not None
        return will() if callable(will) else will

    # --- paho callbacks (network thread) ----------------------------------------------------------

    def _handle_socket_open(self, client: paho.Client, userdata: object, sock: Any) -> None:
        _set_nodelay(sock)
        if self._carrier is not None:
            with contextlib.suppress(OSError, AttributeError, IndexError):
                self._carrier.watch(interface_of(str(sock.getsockname()[0])))

    def _carrier_returned(self, interface: str) -> None:
        # Watch thread: end the stalled connection; paho's loop sees it closed and reconnects on
        # a fresh socket instead of waiting for TCP's next backed-off retransmission. The first
        # tries may fail at once (EHOSTUNREACH while the neighbour entry is re-resolved after
        # the outage), so retry every CARRIER_RETRY_S, not with the configured back-off, for
        # CARRIER_RETRY_FOR_S (then the configured back-off again; a connection restores it too).
        sock: Any = self._paho.socket()
        if sock is None or not self._started:
            return
        log.info("link %s is back: reconnecting to %s now", interface, self.address.url)
        self._paho.reconnect_delay_set(CARRIER_RETRY_S, CARRIER_RETRY_S)  # type: ignore[arg-type]
        restore = threading.Timer(CARRIER_RETRY_FOR_S, self._restore_backoff)
        restore.daemon = True
        restore.start()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _restore_backoff(self) -> None:
        self._paho.reconnect_delay_set(*self._paho_settings[1:])  # type: ignore[arg-type]

    def _handle_pre_connect(self, client: paho.Client, userdata: object) -> None:
        # Before every (re)connect: a will factory signs a fresh offline status each time.
        if self.will is not None:
            topic, payload = self._current_will()
            client.will_set(topic, payload, qos=1, retain=True, properties=self._will_properties())

    def _handle_connect(self, client: paho.Client, userdata: object, flags: object,
                        reason_code: object, properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            self.last_connect_error = str(reason_code)
            self._connack.set()
            if not (self._auto and self.protocol == 5):  # auto falls back quietly
                log.warning("broker %s refused connection: %s", self.address.url, reason_code)
            return
        limit = getattr(properties, "MaximumPacketSize", None)
        self._max_packet_bytes = int(limit) if limit else None
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        with self._subacks:
            self._pending_subscribe_mids.clear()  # lost with the old connection
            self._subscribe_filters.clear()
        if subscriptions:
            self._track_subscribe(client.subscribe(subscriptions), [f for f, _ in subscriptions])
        self.connect_count += 1
        self._restore_backoff()  # a carrier return may have shortened it
        self._connected.set()
        self._connack.set()
        log.debug("connected to %s as %s (%d)", self.address.url, self.client_id, self.connect_count)

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: object,
                           reason_code: object, properties: object) -> None:
        self._connected.clear()
        self.last_disconnect_reason = str(reason_code)
        self.refusal_log.disconnected(reason_code)
        if self._started:
            log.info("disconnected from %s (%s); reconnecting", self.address.url, reason_code)

    def _handle_subscribe(self, client: paho.Client, userdata: object, mid: int,
                          reason_codes: object, properties: object) -> None:
        codes = list(reason_codes) if isinstance(reason_codes, list) else []
        with self._subacks:
            filters = self._subscribe_filters.pop(mid, None)
            if mid in self._pending_subscribe_mids:
                self._pending_subscribe_mids.discard(mid)
            else:
                self._early_subacks[mid] = codes
            self._subacks.notify_all()
        if filters is not None:
            self.refusal_log.suback(filters, codes)

    def _handle_publish(self, client: paho.Client, userdata: object, mid: int,
                        reason_code: object, properties: object) -> None:
        with self._acked:
            self._acked_total += 1
            self._acked.notify_all()
        if self.protocol == 5:
            self.refusal_log.puback(mid, reason_code)

    def _handle_message(self, client: paho.Client, userdata: object,
                        message: paho.MQTTMessage) -> None:
        topic = message.topic
        payload = message.payload if isinstance(message.payload, bytes) else bytes(message.payload)
        with self._lock:
            filters = list(self._subscriptions)
            waiter = self._echo_waiters.get(topic)
        if waiter is not None and waiter[0] == payload:
            waiter[1].set()
            return
        if not any(paho.topic_matches_sub(f, topic) for f in filters):
            # amqtt 0.12 replays retained messages matching *other* clients' subscriptions to a
            # client that connects; drop anything we did not subscribe to
            self.stray_messages += 1
            log.debug("dropping message on unsubscribed topic %s", topic)
            return
        self.counters.record_received(topic, len(payload), message.qos)
        try:
            if self._on_inbound is not None:
                self._on_inbound(Inbound(topic, payload, bool(message.retain), message.qos))
            elif self._on_message is not None:
                self._on_message(topic, payload)
        except Exception:  # the callback's bug must not stop the network loop
            log.exception("message callback failed on %s", topic)
