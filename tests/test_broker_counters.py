"""Byte counters: MQTT header arithmetic and per-topic / per-branch totals."""

from __future__ import annotations

import threading

from broker import topics
from broker.counters import ByteCounters, publish_overhead


def test_publish_overhead_matches_the_mqtt_packet_layout() -> None:
    # 1 fixed-header byte + remaining-length varint + 2-byte topic length + topic + packet id (QoS>0)
    assert publish_overhead("a/b", 10, qos=1, mqtt5=False) == 1 + 1 + 2 + 3 + 2
    assert publish_overhead("a/b", 10, qos=0, mqtt5=False) == 1 + 1 + 2 + 3
    assert publish_overhead("a/b", 10, qos=1, mqtt5=True) == 1 + 1 + 2 + 3 + 2 + 1  # properties
    assert publish_overhead("a/b", 200, qos=1, mqtt5=False) == 1 + 2 + 7
    assert publish_overhead("a/b", 262_144, qos=1, mqtt5=False) == 1 + 3 + 7


def test_totals_by_topic_and_branch_are_thread_safe() -> None:
    counters = ByteCounters()
    t1 = topics.update_topic("f", "a1", "fuse/accel+gyro")
    t2 = topics.update_topic("f", "a2", "fuse/accel+gyro")
    status = topics.status_topic("f", "a1")

    def work() -> None:
        for _ in range(1000):
            counters.record_sent(t1, 100, 1)
            counters.record_received(t2, 50, 1)
            counters.record_sent(status, 10, 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.sent_by_topic[t1].payload_bytes == 400_000
    assert counters.sent_by_branch["fuse/accel+gyro"].messages == 4000
    assert counters.received_by_branch["fuse/accel+gyro"].payload_bytes == 200_000
    assert counters.sent.messages == 8000 and counters.sent.payload_bytes == 440_000
    assert "fuse/accel+gyro" not in counters.received_by_topic
    snap = counters.snapshot()
    assert snap["sent_by_branch"]["fuse/accel+gyro"]["header_bytes"] == \
        4000 * publish_overhead(t1, 100, 1, False)
    assert counters.sent.total_bytes == counters.sent.payload_bytes + counters.sent.header_bytes
