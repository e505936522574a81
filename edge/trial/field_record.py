"""The field part of a trial's record: bytes the OS counted beside the MQTT layer's, link faults.

Pure functions of what the field trial measured (edge.trial.field), so the arithmetic is tested
without a field.

**Protocol overhead** (what the interface counts that the MQTT layer does not): the MQTT layer
counts every PUBLISH it sent or received, payload plus MQTT header (broker/counters.py). A
board's ``eth0`` counts whole Ethernet frames, one per TCP segment (the field sets
``gso_max_segs 1``), each carrying ``FRAME_HEADER_BYTES`` = 66 bytes of headers (Ethernet 14,
IPv4 20, TCP 20, TCP timestamp option 12; a veth has no preamble or FCS). It also counts what the
MQTT layer does not: the MQTT control packets (CONNECT/CONNACK, SUBSCRIBE/SUBACK, a 4-byte
PUBACK for every QoS 1 PUBLISH received, PINGREQ/PINGRESP, DISCONNECT), pure TCP ACKs, ARP, TCP
retransmissions (on a lossy link) and, on a board whose agent was killed, what the killed
process sent after its last checkpoint. So on a clean link, per direction,

    interface_bytes = mqtt_bytes + 66 x frames + control_bytes,

with control_bytes = 4 x QoS 1 PUBLISHes acknowledged + a few hundred bytes of CONNECT,
SUBSCRIBE and keepalive pings: `residual_bytes` (interface - MQTT - 66 x frames) states it.
"""

from __future__ import annotations

from typing import Any

from edge.records import MetricsRow
from edge.trial.coverage import Expected

FRAME_HEADER_BYTES = 66   # Ethernet 14 + IPv4 20 + TCP 20 + TCP timestamps 12 (docs/field.md)
PUBACK_BYTES = 4          # MQTT 3.1.1 PUBACK: fixed header 2 + packet id 2
PROTOCOL_OVERHEAD = (
    "interface bytes = MQTT-layer bytes (PUBLISH payload + MQTT header) + 66 B per frame "
    "(Ethernet 14, IPv4 20, TCP 20, TCP timestamps 12; one frame per segment) + MQTT control "
    "packets (a 4 B PUBACK per QoS 1 PUBLISH received, CONNECT, SUBSCRIBE, pings) + pure TCP "
    "ACKs, ARP and retransmissions; residual = interface - MQTT - 66 x frames")


def counter_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    """Return after - before of the byte and packet counters (None when either is missing)."""
    if before is None or after is None:
        return None
    keys = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")
    return {k: int(after[k]) - int(before[k]) for k in keys}


def interface_vs_mqtt(delta: dict[str, int] | None, final: dict[str, Any] | None) -> dict[str, Any]:
    """Set the bytes the OS counted on a board's eth0 beside its agent's MQTT-layer counters.

    Parameters
    ----------
    delta : dict or None
        Interface counter increments (tx/rx bytes and packets) over the agent's life.
    final : dict or None
        The agent's final.json (its ``bytes`` block: sent / received totals and message counts).

    Returns
    -------
    dict
        ``interface`` (the delta), ``mqtt`` (sent/received bytes and messages), and per direction
        ``overhead_bytes`` (interface - MQTT), ``overhead_ratio`` (interface / MQTT) and
        ``residual_bytes`` (interface - MQTT - 66 x frames; see the module docstring).
    """
    bytes_block = (final or {}).get("bytes") or {}
    sent, received = bytes_block.get("sent") or {}, bytes_block.get("received") or {}
    mqtt = {"sent_bytes": int(bytes_block.get("sent_total", 0) or 0),
            "received_bytes": int(bytes_block.get("received_total", 0) or 0),
            "sent_messages": int(sent.get("messages", 0) or 0),
            "received_messages": int(received.get("messages", 0) or 0)}
    out: dict[str, Any] = {"interface": delta, "mqtt": mqtt if final else None}
    if delta is None or not final:
        return out
    for direction, iface_key, frames_key, mqtt_key in (("tx", "tx_bytes", "tx_packets", "sent_bytes"),
                                                       ("rx", "rx_bytes", "rx_packets", "received_bytes")):
        iface, frames, layer = delta[iface_key], delta[frames_key], mqtt[mqtt_key]
        out[direction] = {
            "overhead_bytes": iface - layer,
            "overhead_ratio": iface / layer if layer else None,
            "residual_bytes": iface - layer - FRAME_HEADER_BYTES * frames,
        }
    return out


def missed_mix_rounds(board: str, rows: list[MetricsRow], expected: Expected) -> list[int]:
    """Mixing rounds in which an expected exchange with `board` did not happen, either way.

    Sent: a neighbour's row of round r did not mix `board`'s round r-1 update for a branch it
    expected it on. Received: `board`'s own row of round r did not mix an expected neighbour.
    A round without the row in question (the agent did not train it) counts as missed too.
    """
    last: dict[tuple[str, int], MetricsRow] = {}
    for row in rows:
        last[(row["agent"], int(row["round"]))] = row
    missed: set[int] = set()
    for (agent, round_idx), plan in expected.items():
        for key, senders in plan.items():
            if agent != board and board not in senders:
                continue
            found = last.get((agent, round_idx))
            used = set((found["mixed_from"] if found else {}).get(key, ()))
            wanted = senders if agent == board else (board,)
            if any(s not in used for s in wanted):
                missed.add(round_idx)
    return sorted(missed)


__all__ = ["FRAME_HEADER_BYTES", "PROTOCOL_OVERHEAD", "PUBACK_BYTES", "counter_delta",
           "interface_vs_mqtt", "missed_mix_rounds"]
