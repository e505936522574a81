"""broker.carrier on a real veth pair: a board's link going down and coming back is seen.

The board end of the pair lives in a network namespace the test creates (root); the far end,
the "switch port", is taken down and up from the root namespace, as the field runner does.
The MQTT side (a reconnect that beats TCP's back-off) is checked by the field trial test
(tests/test_edge_field_trial.py: missed mixes for exactly the outage's rounds).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.carrier import CarrierWatch, carrier_up, interface_of

REPO = Path(__file__).resolve().parents[1]

BOARD = """
import sys, time
sys.path.insert(0, {repo!r})
from broker.carrier import CarrierWatch, interface_of
iface = interface_of({address!r})
print("iface", iface, flush=True)
watch = CarrierWatch(lambda name: print("return", name, flush=True), poll_s=0.05)
watch.watch(iface)
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
watch.stop()
print("returns", watch.returns, flush=True)
"""


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str, str]]:
    """(namespace, board end, switch end, board address); removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    ns, board, switch, address = f"carrier-{tag}", f"cw{tag}b", f"cw{tag}s", "10.251.7.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", switch, "type", "veth", "peer", "name", board)
        _ip("link", "set", board, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", board)
        _ip("-n", ns, "link", "set", board, "up")
        _ip("link", "set", switch, "up")
        yield ns, board, switch, address
    finally:
        subprocess.run(["ip", "link", "del", switch], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_loopback_and_foreign_addresses_are_not_watched() -> None:
    assert interface_of("127.0.0.1") is None
    assert interface_of("::1") is None
    assert interface_of("not an address") is None
    assert interface_of("192.0.2.77") is None      # TEST-NET-1: held by no interface here
    assert carrier_up("no-such-interface0") is None


def test_a_switch_port_down_and_up_is_one_return_on_the_board(veth) -> None:
    ns, board, switch, address = veth
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                             BOARD.format(repo=str(REPO), address=address), "3"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().split() == ["iface", board]
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)                     # seen up first: a carrier that starts up is no return
        _ip("link", "set", switch, "down")  # the switch port: the board end loses its carrier
        time.sleep(0.5)
        _ip("link", "set", switch, "up")
        out = proc.communicate(timeout=20)[0]
    finally:
        proc.kill()
    assert out.splitlines() == [f"return {board}", "returns 1"], out


def test_no_callback_without_an_interface_or_after_stop() -> None:
    seen: list[str] = []
    watch = CarrierWatch(seen.append, poll_s=0.01)
    watch.watch(None)          # loopback connection: nothing to watch, no thread
    time.sleep(0.05)
    watch.stop()
    assert seen == [] and watch.returns == 0 and watch.interface is None


def test_a_stopped_watch_starts_again_on_the_next_watch() -> None:
    # A client that falls back from MQTT 5 to 3.1.1 stops its watch and connects again.
    watch = CarrierWatch(lambda name: None, poll_s=0.01)
    watch.watch("nosuchif0")
    assert watch.running
    watch.stop()
    assert not watch.running and watch.interface is None
    watch.watch("nosuchif0")
    assert watch.running and watch.interface == "nosuchif0"
    watch.stop()
    assert not watch.running
