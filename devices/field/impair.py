"""Link impairments the kernel applies: rate caps (tc tbf), random loss (nftables), link down/up.

What is real here and what is not (docs/field.md, "What is real"):

- **rate**: a token bucket filter (tc-tbf(8)) on the egress of *both* ends of the veth pair, so
  the cap holds in each direction; TCP sees a slow link, queues build in the qdisc.
- **loss**: an nftables rule ``numgen random mod 10000 < N drop`` on the *ingress* hook of each
  end (netdev family): a frame is transmitted (it costs rate and the sender's counters count
  it) and lost on arrival, each direction independently, like radio loss. A drop in the
  sender's own egress would instead be reported to its TCP stack as local congestion.
- **link down**: the far end (the switch port) is set down, so the board's ``eth0`` loses
  carrier; its address and routes stay, its frames go nowhere and TCP retransmits, as when a
  board leaves radio range.
- delay and jitter: not available (this kernel has no ``sch_netem``); they stay application-level
  (`faults: delay` in the fleet config).
"""

from __future__ import annotations

import math

from devices.field import iproute
from devices.field.plan import Link, VethEnd

ETHERNET_FRAME_MAX_BYTES = 1514  # 1500 MTU + 14-byte header (no FCS on a veth)
QUEUE_S = 0.2                    # how long a full tbf queue takes to drain
LOSS_SCALE = 10_000              # loss resolution: 0.01 %


def tbf_args(rate_kbit: float) -> list[str]:
    """Compute the tbf parameters for a rate cap.

    Parameters
    ----------
    rate_kbit : float
        The cap in kbit/s (1 kbit = 1000 bit, as tc(8) counts).

    Returns
    -------
    list of str
        ``tbf rate <bits>bit burst <bytes> limit <bytes>``. The bucket holds two full frames
        or rate/100 (tc-tbf(8): the burst must be at least rate/HZ to reach the rate, HZ up
        to 100 on the kernels it was written for), whichever is larger; the queue holds
        `QUEUE_S` seconds of traffic beyond the burst.
    """
    rate_bits = round(rate_kbit * 1000)
    rate_bytes_per_s = rate_bits / 8
    burst = max(2 * ETHERNET_FRAME_MAX_BYTES, math.ceil(rate_bytes_per_s / 100))
    limit = burst + math.ceil(rate_bytes_per_s * QUEUE_S)
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "limit", str(limit)]


def shape(end: VethEnd, rate_kbit: float | None) -> None:
    """Cap the egress of `end` at `rate_kbit` (None removes the cap)."""
    tc = ["tc", *(["-n", end.netns] if end.netns else []), "qdisc"]
    if rate_kbit is None:
        if "tbf" in iproute.run([*tc, "show", "dev", end.ifname]):
            iproute.run([*tc, "del", "dev", end.ifname, "root"])
        return
    iproute.run([*tc, "replace", "dev", end.ifname, "root", *tbf_args(rate_kbit)])


def loss_threshold(loss_percent: float) -> int:
    """Return the numgen threshold for a loss: drop when ``random mod LOSS_SCALE < threshold``."""
    return round(loss_percent * LOSS_SCALE / 100)


def loss_chain(end: VethEnd) -> str:
    """Name the loss chain on `end`'s ingress."""
    return f"loss_{end.ifname}"


def loss_script(table: str, end: VethEnd, loss_percent: float) -> str:
    """Write the ``nft -f`` script that sets the random loss on `end`'s ingress (0 removes it).

    It creates the netdev table and the ingress chain when missing and replaces the chain's
    rule, so applying it twice or with another percentage is safe.
    """
    chain = loss_chain(end)
    lines = [
        f"add table netdev {table}",
        f"add chain netdev {table} {chain} {{ type filter hook ingress device \"{end.ifname}\" "
        "priority 0 ; policy accept ; }",
        f"flush chain netdev {table} {chain}",
    ]
    threshold = loss_threshold(loss_percent)
    if threshold > 0:
        lines.append(f"add rule netdev {table} {chain} numgen random mod {LOSS_SCALE} "
                     f"< {threshold} counter drop")
    return "\n".join(lines) + "\n"


def set_loss(table: str, end: VethEnd, loss_percent: float) -> None:
    """Apply `loss_script` inside `end`'s namespace."""
    argv = ["nft", "-f", "-"]
    if end.netns:
        argv = iproute.netns_exec_argv(end.netns, argv)
    iproute.run(argv, input_text=loss_script(table, end, loss_percent))


def apply_link(table: str, near: VethEnd, far: VethEnd, link: Link) -> None:
    """Apply a link's rate cap and loss to both ends of a fresh veth pair (outages are timed).

    Both ends also send one frame per packet, so their counters count frames as a NIC does.
    An uncapped, lossless link gets neither a qdisc nor an nftables table.
    """
    for end in (near, far):
        iproute.one_frame_per_packet(end)
        if link.rate_kbit is not None:
            shape(end, link.rate_kbit)
        if link.loss_percent > 0:
            set_loss(table, end, link.loss_percent)


def set_link_down(far: VethEnd, down: bool) -> None:
    """Take a link down (or back up) at its far end, the switch port."""
    iproute.set_link_up(far, not down)
