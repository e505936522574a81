"""iproute2 through subprocess: namespaces, veth pairs, bridges, addresses, link state, counters.

The command-line tools rather than a netlink library (pyroute2): they ship with every Debian and
Raspberry Pi OS, need no new dependency, and every step `field up` takes is a command an operator
can read in docs/field.md and type by hand to inspect or repair a field.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devices.field.plan import VethEnd

COMMAND_TIMEOUT_S = 30.0


class FieldCommandError(RuntimeError):
    """A system command failed; the message is one line: the command and its last error line."""


def run(argv: Sequence[str], input_text: str | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command, return its stdout.

    Raises
    ------
    FieldCommandError
        When it cannot start, times out or exits non-zero.
    """
    try:
        done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FieldCommandError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()] or \
            [f"exit status {done.returncode}"]
        raise FieldCommandError(f"{' '.join(argv)}: {lines[-1].strip()}")
    return done.stdout


def ip_argv(netns: str | None, *args: str) -> list[str]:
    """``ip [-n NETNS] ARGS``."""
    return ["ip", *(["-n", netns] if netns else []), *args]


def netns_names() -> set[str]:
    """List the named network namespaces (``ip netns list``)."""
    out = run(["ip", "-j", "netns", "list"]).strip()
    return {entry["name"] for entry in json.loads(out)} if out else set()


def netns_add(name: str) -> None:
    """Create a named network namespace and bring its loopback up."""
    run(["ip", "netns", "add", name])
    run(ip_argv(name, "link", "set", "lo", "up"))


def netns_delete(name: str) -> None:
    """Delete a named network namespace (its interfaces, qdiscs and nft tables go with it)."""
    run(["ip", "netns", "delete", name])


def netns_pids(name: str) -> list[int]:
    """Every process whose network namespace is `name` (``ip netns pids``)."""
    return [int(p) for p in run(["ip", "netns", "pids", name]).split()]


def netns_exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """Build the command line that runs `argv` inside `netns` (``ip netns exec``).

    `ip netns exec` execs the command in place, so a spawned process keeps the pid of this
    command line; it also gives the command a private mount namespace with /sys remounted
    for `netns` (ip-netns(8)).
    """
    return ["ip", "netns", "exec", netns, *argv]


def veth_pair(near: VethEnd, far: VethEnd) -> None:
    """Create a veth pair with each end born in its namespace (no name clash in the root)."""
    run(["ip", "link", "add", near.ifname, *(["netns", near.netns] if near.netns else []),
         "type", "veth", "peer", "name", far.ifname, *(["netns", far.netns] if far.netns else [])])


def link_exists(end: VethEnd) -> bool:
    """Whether interface `end` exists."""
    try:
        run(ip_argv(end.netns, "link", "show", "dev", end.ifname))
    except FieldCommandError:
        return False
    return True


def link_delete(end: VethEnd) -> None:
    """Delete an interface (for a veth, both ends go)."""
    run(ip_argv(end.netns, "link", "delete", "dev", end.ifname))


def set_link_up(end: VethEnd, up: bool) -> None:
    """Administratively bring an interface up or down."""
    run(ip_argv(end.netns, "link", "set", "dev", end.ifname, "up" if up else "down"))


def one_frame_per_packet(end: VethEnd) -> None:
    """Let the stack hand this interface one wire frame at a time (``gso_max_segs 1``).

    A veth accepts 64 KB GSO super-packets and counts each as one packet with one set of
    headers; with one segment per packet its byte counters count every frame's Ethernet, IP
    and TCP headers, as a physical NIC's counters do, and tbf shapes real frame sizes.
    """
    run(ip_argv(end.netns, "link", "set", "dev", end.ifname, "gso_max_segs", "1"))


def add_bridge(netns: str, name: str) -> None:
    """Create a bridge in `netns` and bring it up."""
    run(ip_argv(netns, "link", "add", name, "type", "bridge"))
    run(ip_argv(netns, "link", "set", "dev", name, "up"))


def enslave(end: VethEnd, bridge: str) -> None:
    """Attach an interface to a bridge of its namespace and bring it up."""
    run(ip_argv(end.netns, "link", "set", "dev", end.ifname, "master", bridge, "up"))


def add_address(end: VethEnd, address: ipaddress.IPv4Address, prefixlen: int) -> None:
    """Give an interface an address and bring it up."""
    run(ip_argv(end.netns, "address", "add", f"{address}/{prefixlen}", "dev", end.ifname))
    run(ip_argv(end.netns, "link", "set", "dev", end.ifname, "up"))


@dataclass(frozen=True)
class LinkCounters:
    """An interface's kernel counters (``ip -s link``; rtnl_link_stats64, linux/if_link.h).

    On a field link, tx counts every frame the end put on the wire, including frames the far
    end's loss rule then drops; rx counts frames that reached this end before its own loss
    rule. With one frame per packet (`one_frame_per_packet`) bytes include the 14-byte Ethernet
    header of every frame, and no FCS.
    """

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int
    operstate: str


def link_counters(end: VethEnd) -> LinkCounters:
    """Read the counters of interface `end`.

    Raises
    ------
    FieldCommandError
        When the interface or its namespace does not exist.
    """
    raw: list[dict[str, Any]] = json.loads(
        run(ip_argv(end.netns, "-j", "-s", "link", "show", "dev", end.ifname)))
    stats = raw[0]["stats64"]
    return LinkCounters(rx_bytes=int(stats["rx"]["bytes"]), tx_bytes=int(stats["tx"]["bytes"]),
                        rx_packets=int(stats["rx"]["packets"]),
                        tx_packets=int(stats["tx"]["packets"]),
                        rx_dropped=int(stats["rx"]["dropped"]),
                        tx_dropped=int(stats["tx"]["dropped"]),
                        operstate=str(raw[0].get("operstate", "UNKNOWN")))


def root_ipv4_routes() -> list[ipaddress.IPv4Network]:
    """List the destinations of the root namespace's IPv4 routes (main table, no default)."""
    routes: list[dict[str, Any]] = json.loads(run(["ip", "-4", "-j", "route", "show"]) or "[]")
    found = []
    for route in routes:
        dst = str(route.get("dst", "default"))
        if dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    return found
