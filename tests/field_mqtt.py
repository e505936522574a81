"""An MQTT publisher run inside a field board's namespace by the field tests.

    python field_mqtt.py HOST TOPIC --size BYTES --count N [--keepalive S] [--persistent]
                         [--wait-line]

Connects to HOST:1883 (paho), optionally waits for a line on stdin (the test takes the link
down meanwhile), publishes N QoS 1 messages of BYTES bytes each (the first 8 bytes carry the
message index) and waits for every PUBACK. Prints one JSON line: connect_s, publish_s (first
publish to last PUBACK), acked, disconnects, reconnects.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("topic")
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--keepalive", type=int, default=60)
    parser.add_argument("--persistent", action="store_true")
    parser.add_argument("--wait-line", action="store_true")
    parser.add_argument("--client-id", default="field-test-board")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    connected = threading.Event()
    events = {"disconnects": 0, "connects": 0}

    def on_connect(client: paho.Client, userdata: object, flags: object, rc: object,
                   props: object = None) -> None:
        events["connects"] += 1
        connected.set()

    def on_disconnect(client: paho.Client, userdata: object, flags: object, rc: object,
                      props: object = None) -> None:
        events["disconnects"] += 1

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         clean_session=not args.persistent)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    client.max_inflight_messages_set(args.count + 1)
    start = time.monotonic()
    client.connect(args.host, 1883, keepalive=args.keepalive)
    client.loop_start()
    if not connected.wait(20):
        print(json.dumps({"error": "no CONNACK"}))
        return 1
    connect_s = time.monotonic() - start
    if args.wait_line:
        print("ready", flush=True)
        sys.stdin.readline()
    payload_tail = bytes(max(0, args.size - 8))
    t0 = time.monotonic()
    infos = [client.publish(args.topic, i.to_bytes(8, "big") + payload_tail, qos=1)
             for i in range(args.count)]
    deadline = t0 + args.timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
    publish_s = time.monotonic() - t0
    acked = sum(1 for info in infos if info.is_published())
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"connect_s": connect_s, "publish_s": publish_s, "acked": acked,
                      "disconnects": events["disconnects"],
                      "reconnects": events["connects"] - 1}), flush=True)
    return 0 if acked == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
