"""Helpers for the field tests: unique names and subnets, a field that always comes down,
an MQTT subscriber in the root namespace, and leftover checks."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devices.field import iproute
from devices.field.lifecycle import UpResult, field_down, field_up
from devices.field.plan import FieldPlan
from devices.field.spec import FieldSpec, load_field

PUBLISHER = Path(__file__).with_name("field_mqtt.py")


def unique_field_name() -> str:
    """A field name no other test uses ([a-z][a-z0-9]{0,9})."""
    return f"t{uuid.uuid4().hex[:8]}"


def free_subnet() -> str:
    """A private /16 of 10.0.0.0/8 that no root route overlaps."""
    taken = iproute.root_ipv4_routes()
    candidates = list(range(100, 250))
    random.shuffle(candidates)
    for second in candidates:
        net = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if not any(net.overlaps(route) for route in taken):
            return str(net)
    raise RuntimeError("no free 10.x.0.0/16")


def write_field(tmp_path: Path, doc: dict[str, Any]) -> FieldSpec:
    """Write a field file (unique name and subnet unless given) and load it."""
    doc = {"field": unique_field_name(), "subnet": free_subnet(),
           "prefixes": str(tmp_path / "prefixes"), **doc}
    path = tmp_path / f"{doc['field']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_field(path)


@contextmanager
def field(spec: FieldSpec) -> Iterator[UpResult]:
    """Bring a field up for a test and always take it down again."""
    try:
        yield field_up(spec)
    finally:
        field_down(spec)


def leftovers(plan: FieldPlan, pids: list[int]) -> list[str]:
    """Everything of the field still on the system: namespaces, links, processes, files."""
    found = [f"netns {ns}" for ns in iproute.netns_names() if ns.startswith(f"{plan.name}-")]
    links = json.loads(iproute.run(["ip", "-j", "link", "show"]))
    found += [f"link {ln['ifname']}" for ln in links if ln["ifname"].startswith(f"{plan.name}-")]
    found += [f"pid {pid}" for pid in pids if _running(pid)]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(plan.run_dir) in cmdline:
                found.append(f"process {proc.name}: {cmdline.strip()}")
    nft_root = iproute.run(["nft", "list", "tables"])
    found += [f"nft {line}" for line in nft_root.splitlines() if plan.name in line]
    qdiscs = iproute.run(["tc", "qdisc", "show"])
    found += [f"qdisc {line}" for line in qdiscs.splitlines() if f"{plan.name}-" in line]
    if plan.run_dir.exists():
        found.append(f"dir {plan.run_dir}")
    return found


def _running(pid: int) -> bool:
    """Whether `pid` is a live process; a zombie (killed, not yet collected by its parent:
    init, once `field up` has exited) runs nothing and holds no namespace."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def publish_from_board(plan: FieldPlan, board: str, host: str, topic: str, *, size: int,
                       count: int = 1, timeout_s: float = 60.0, extra: list[str] | None = None
                       ) -> dict[str, Any]:
    """Run the publisher inside a board's namespace and return its JSON report."""
    ns = plan.board(board).netns
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(PUBLISHER), host, topic,
         "--size", str(size), "--count", str(count), "--client-id", f"{plan.name}-{board}",
         *(extra or [])], capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, out.stdout + out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def board_publisher(plan: FieldPlan, board: str, host: str, topic: str, *, size: int,
                    count: int, extra: list[str]) -> subprocess.Popen[str]:
    """Start the publisher in a board's namespace, waiting for a stdin line before publishing."""
    ns = plan.board(board).netns
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(PUBLISHER), host, topic,
         "--size", str(size), "--count", str(count), "--client-id", f"{plan.name}-{board}",
         "--wait-line", *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


class Subscriber:
    """An MQTT subscriber in the root namespace recording (arrival time, topic, first 8 bytes)."""

    def __init__(self, host: str, topic: str) -> None:
        self.messages: list[tuple[float, str, int]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"field-test-sub-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, 1883, keepalive=30)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic,
                                  int.from_bytes(msg.payload[:8], "big")))

    def wait_for(self, count: int, timeout_s: float) -> list[tuple[float, str, int]]:
        """Wait until `count` messages arrived (or the timeout); return them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    break
            time.sleep(0.05)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
