"""What a broker refused, said in one line: MQTT 5 reason codes (OASIS MQTT 5.0, section 2.4).

MQTT 3.1.1 has no negative acknowledgement (an ACL drops a publish and still acknowledges it);
MQTT 5 PUBACK, SUBACK and DISCONNECT packets carry a reason code, which `broker.client` records as
a `Refusal` and `describe_refusal` turns into the line an agent fails with.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, NamedTuple

log = logging.getLogger("broker.client")
REFUSALS_KEPT = 100
_EARLY_KEPT = 1024

# MQTT 5 DISCONNECT reasons that blame what this client sent (OASIS MQTT 5.0, section 3.14.2.1):
# not authorized, topic filter/name invalid, receive maximum exceeded, topic alias invalid, packet
# too large, quota exceeded, payload format invalid, retain/QoS not supported. Others (server
# shutting down, keep alive timeout, a lost connection) are not refusals.
REFUSING_DISCONNECTS = frozenset({0x87, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x97, 0x99, 0x9A, 0x9B})


class Refusal(NamedTuple):
    """Something the broker refused (MQTT 5 reason codes, or a DISCONNECT reason)."""

    action: str  # "publish" | "subscribe" | "disconnect"
    topic: str  # the topic or filter; "" for a disconnect
    reason: str  # the reason code's name, e.g. "Not authorized", "Packet too large"
    code: int


class BrokerRefusedError(RuntimeError):
    """The broker refused a publish or subscription; the message is one line naming both."""


def describe_refusal(refusal: Refusal, username: str | None, name_topic: bool = True) -> str:
    """Describe a refusal in one line: what (and on which topic), why, and the likely cause.

    `name_topic=False` leaves the topic out (when the caller's message names it already).
    """
    who = f"MQTT user {username!r}" if username else "an anonymous client"
    if refusal.code == 0x87:  # Not authorized
        cause = f"the broker's ACL does not let {who} {refusal.action} this topic"
    elif refusal.code == 0x95:  # Packet too large
        cause = "a message exceeded the broker's max_packet_size"
    elif refusal.code in (0x86, 0x8C):  # Bad user name or password / Bad authentication method
        cause = f"the broker does not accept the credentials of {who}"
    else:
        cause = "see the broker's log"
    where = f" on {refusal.topic}" if refusal.topic and name_topic else ""
    return f"broker refused {refusal.action}{where}: {refusal.reason} ({cause})"


class RefusalLog:
    """The refusals one client received (thread-safe), with the MQTT 5 bookkeeping they need.

    A PUBACK names only a packet id, so the topic of each QoS 1 publish is kept until its PUBACK;
    paho may handle a PUBACK before `publish()` has returned the packet id, so an early PUBACK is
    held until the id is registered.
    """

    def __init__(self, username: str | None) -> None:
        self.username = username
        self.count = 0
        self._kept: deque[Refusal] = deque(maxlen=REFUSALS_KEPT)
        self._topics: dict[int, str] = {}  # packet id -> topic until its PUBACK
        self._early: dict[int, Any] = {}  # packet id -> reason code of a PUBACK seen first
        self._lock = threading.Lock()

    @property
    def refusals(self) -> list[Refusal]:
        """The most recent refusals (up to 100; `count` counts all)."""
        with self._lock:
            return list(self._kept)

    def first(self) -> Refusal | None:
        """Return the earliest refusal kept, or None."""
        with self._lock:
            return self._kept[0] if self._kept else None

    def record(self, refusal: Refusal) -> None:
        """Keep and log one refusal."""
        with self._lock:
            self._kept.append(refusal)
            self.count += 1
        log.warning("%s", describe_refusal(refusal, self.username))

    def published(self, mid: int, topic: str) -> None:
        """Note that a QoS 1 publish of `topic` got packet id `mid`."""
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._topics[mid] = topic
        if early is not None:
            self._check("publish", topic, early)

    def puback(self, mid: int, reason_code: Any) -> None:
        """Take the PUBACK of packet `mid` and its `reason_code`."""
        with self._lock:
            topic = self._topics.pop(mid, None)
            if topic is None:
                if len(self._early) >= _EARLY_KEPT:  # acks of QoS 0 publishes are never claimed
                    self._early.clear()
                self._early[mid] = reason_code
        if topic is not None:
            self._check("publish", topic, reason_code)

    def suback(self, filters: list[str], reason_codes: list[Any]) -> None:
        """Take a SUBACK for `filters`, with one reason code each."""
        for topic_filter, code in zip(filters, reason_codes, strict=False):
            self._check("subscribe", topic_filter, code)

    def disconnected(self, reason_code: Any) -> None:
        """Take the broker's DISCONNECT reason; one that blames us is a refusal."""
        if int(getattr(reason_code, "value", 0)) in REFUSING_DISCONNECTS:
            self._check("disconnect", "", reason_code)

    def _check(self, action: str, topic: str, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.record(Refusal(action, topic, str(reason_code), int(getattr(reason_code, "value", 0))))
