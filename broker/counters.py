"""Byte counters per topic and per branch, for sent and received MQTT messages (thread-safe)."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from broker import topics


@dataclass
class Traffic:
    """Messages and bytes in one direction; header = MQTT PUBLISH overhead, payload = app bytes."""

    messages: int = 0
    payload_bytes: int = 0
    header_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """Payload plus header bytes."""
        return self.payload_bytes + self.header_bytes

    def add(self, payload_bytes: int, header_bytes: int) -> None:
        """Count one message."""
        self.messages += 1
        self.payload_bytes += payload_bytes
        self.header_bytes += header_bytes


def publish_overhead(topic: str, payload_bytes: int, qos: int, mqtt5: bool) -> int:
    """Bytes of a PUBLISH packet other than its payload (fixed header, topic, packet id, props)."""
    variable = 2 + len(topic.encode("utf-8")) + (2 if qos > 0 else 0) + (1 if mqtt5 else 0)
    remaining = variable + payload_bytes
    length_bytes = 1 + (remaining >= 128) + (remaining >= 16384) + (remaining >= 2097152)
    return 1 + length_bytes + variable


class ByteCounters:
    """Totals by topic and by branch key (update topics only), sent and received."""

    def __init__(self, mqtt5: bool = False) -> None:
        self.mqtt5 = mqtt5
        self._lock = threading.Lock()
        self.sent = Traffic()
        self.received = Traffic()
        self.sent_by_topic: dict[str, Traffic] = {}
        self.received_by_topic: dict[str, Traffic] = {}
        self.sent_by_branch: dict[str, Traffic] = {}
        self.received_by_branch: dict[str, Traffic] = {}

    def record_sent(self, topic: str, payload_bytes: int, qos: int) -> None:
        """Count one published message of `payload_bytes` on `topic`."""
        self._record(topic, payload_bytes, qos, self.sent, self.sent_by_topic, self.sent_by_branch)

    def record_received(self, topic: str, payload_bytes: int, qos: int) -> None:
        """Count one received message of `payload_bytes` on `topic`."""
        self._record(topic, payload_bytes, qos, self.received, self.received_by_topic,
                     self.received_by_branch)

    def _record(self, topic: str, payload_bytes: int, qos: int, total: Traffic,
                by_topic: dict[str, Traffic], by_branch: dict[str, Traffic]) -> None:
        header_bytes = publish_overhead(topic, payload_bytes, qos, self.mqtt5)
        info = topics.parse_topic(topic)
        with self._lock:
            total.add(payload_bytes, header_bytes)
            by_topic.setdefault(topic, Traffic()).add(payload_bytes, header_bytes)
            if info is not None and info.branch_key is not None:
                by_branch.setdefault(info.branch_key, Traffic()).add(payload_bytes, header_bytes)

    def snapshot(self) -> dict[str, object]:
        """Return a JSON-ready copy of every counter."""
        with self._lock:
            return {
                "sent": asdict(self.sent), "received": asdict(self.received),
                "sent_by_topic": {k: asdict(v) for k, v in self.sent_by_topic.items()},
                "received_by_topic": {k: asdict(v) for k, v in self.received_by_topic.items()},
                "sent_by_branch": {k: asdict(v) for k, v in self.sent_by_branch.items()},
                "received_by_branch": {k: asdict(v) for k, v in self.received_by_branch.items()},
            }
