"""The field's layout as pure data: names, addresses and resolved links of every board and site.

Nothing here touches the system; `devices.field.lifecycle` creates what the plan describes and
`field down` removes the names the plan gives (docs/field.md, "Layout").

Names (all carry the field name, which has no '-', so ``<field>-`` is an unambiguous prefix):

- board namespace ``<field>-b-<board>``, its interface ``eth0``;
- site gateway namespace ``<field>-s-<site>``: bridge ``br0``, a port ``b<j>`` per board,
  ``op0`` (the operator link's far end), ``wan0`` (the backhaul);
- backhaul switch namespace ``<field>-core``: bridge ``br0``, a port ``s<i>`` per site;
- in the root namespace only the operator link of each site, ``<field>-m<i>`` (15 characters
  at most: IFNAMSIZ is 16 with the NUL, linux/if.h).

Addresses in the field's /16 ``A.B.0.0``: the backhaul is ``A.B.0.0/24`` with site i's gateway at
``A.B.0.<i+1>``; site i's LAN is ``A.B.<i+1>.0/24`` with the gateway (and its broker) at ``.1``,
board j at ``.<j+2>`` and the operator (the root namespace, where `flash` and the trial runner
run) at ``.254``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from devices.field.spec import FieldSpec, LinkSpec, Outage

RUN_ROOT = Path("/run/parse-edge/field")
MQTT_PORT = 1883
SSH_PORT = 22
BOARD_IFNAME = "eth0"
BRIDGE_IFNAME = "br0"
WAN_IFNAME = "wan0"
OPERATOR_PEER_IFNAME = "op0"
OPERATOR_HOST = 254
GATEWAY_HOST = 1
FIRST_BOARD_HOST = 2


@dataclass(frozen=True)
class Link:
    """A resolved link: None rate = uncapped."""

    rate_kbit: float | None
    loss_percent: float
    outages: tuple[Outage, ...]


@dataclass(frozen=True)
class VethEnd:
    """One end of a veth pair: its namespace (None = root) and interface name."""

    netns: str | None
    ifname: str


@dataclass(frozen=True)
class BoardPlan:
    """One board: where it lives and how it is linked to its site's switch."""

    id: str
    site: str
    netns: str
    address: ipaddress.IPv4Address
    prefixlen: int
    gateway: ipaddress.IPv4Address
    near: VethEnd            # the board's eth0
    far: VethEnd             # its port on the site bridge
    link: Link
    prefix: Path             # where releases are installed (the deploy's --prefix)
    reboots: tuple[int, ...] = ()   # rounds on entering which a trial kills its agent

    @property
    def broker_url(self) -> str:
        """The site broker this board's agent connects to."""
        return f"mqtt://{self.gateway}:{MQTT_PORT}"


@dataclass(frozen=True)
class SitePlan:
    """One site: its gateway namespace, LAN, broker, operator link and backhaul link."""

    name: str
    index: int
    netns: str
    lan: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address       # bridge address, broker listener
    operator: ipaddress.IPv4Address      # the root namespace's address on this LAN
    operator_link: VethEnd               # root end; the far end is op0 on the bridge
    wan_address: ipaddress.IPv4Address   # on the backhaul
    near: VethEnd                        # wan0 in the gateway namespace
    far: VethEnd                         # s<i> on the core bridge
    backhaul: Link
    boards: tuple[BoardPlan, ...]

    @property
    def broker_url(self) -> str:
        """The site broker as the operator reaches it."""
        return f"mqtt://{self.gateway}:{MQTT_PORT}"


@dataclass(frozen=True)
class FieldPlan:
    """The whole field."""

    name: str
    core_netns: str
    backhaul_lan: ipaddress.IPv4Network
    sites: tuple[SitePlan, ...]
    hub: str
    run_dir: Path

    @property
    def boards(self) -> tuple[BoardPlan, ...]:
        """Every board, site by site."""
        return tuple(b for s in self.sites for b in s.boards)

    def board(self, board_id: str) -> BoardPlan:
        """Return the board named `board_id`; KeyError when there is none."""
        for b in self.boards:
            if b.id == board_id:
                return b
        raise KeyError(board_id)

    def site(self, name: str) -> SitePlan:
        """Return the site named `name`; KeyError when there is none."""
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def hub_site(self) -> SitePlan:
        """The site every other site's broker bridges to."""
        return self.site(self.hub)

    @property
    def netns_names(self) -> tuple[str, ...]:
        """Every namespace the field creates, in creation order."""
        return (self.core_netns, *(s.netns for s in self.sites), *(b.netns for b in self.boards))

    @property
    def root_links(self) -> tuple[str, ...]:
        """Every interface the field creates in the root namespace."""
        return tuple(s.operator_link.ifname for s in self.sites)


def resolve_link(*levels: LinkSpec) -> Link:
    """Merge link settings key by key, later levels overriding earlier ones.

    Parameters
    ----------
    *levels : LinkSpec
        From the most general (the field default) to the most specific (the board's own).

    Returns
    -------
    Link
        Unset keys end as: uncapped rate, 0 % loss, no outages.
    """
    rate: float | None = None
    loss = 0.0
    outages: tuple[Outage, ...] = ()
    for level in levels:
        rate = level.rate_kbit if level.rate_kbit is not None else rate
        loss = level.loss_percent if level.loss_percent is not None else loss
        outages = level.outages if level.outages is not None else outages
    return Link(rate, loss, outages)


def plan_field(spec: FieldSpec, run_root: Path = RUN_ROOT) -> FieldPlan:
    """Lay out `spec`: names, addresses, links and prefixes of every site and board.

    Parameters
    ----------
    spec : FieldSpec
        A validated field file.
    run_root : Path
        Where the field's run directory (state, keys, logs, inventory) is made:
        ``run_root / <field>``.
    """
    doc = spec.doc
    name = doc.field
    net = ipaddress.IPv4Network(doc.subnet)
    octets = net.network_address.packed
    backhaul_lan = ipaddress.IPv4Network(f"{octets[0]}.{octets[1]}.0.0/24")
    core = f"{name}-core"
    sites: list[SitePlan] = []
    for i, (site_name, site) in enumerate(doc.sites.items()):
        lan = ipaddress.IPv4Network(f"{octets[0]}.{octets[1]}.{i + 1}.0/24")
        gateway = lan.network_address + GATEWAY_HOST
        netns = f"{name}-s-{site_name}"
        boards = tuple(
            BoardPlan(
                id=b.id, site=site_name, netns=f"{name}-b-{b.id}",
                address=lan.network_address + FIRST_BOARD_HOST + j, prefixlen=lan.prefixlen,
                gateway=gateway, near=VethEnd(f"{name}-b-{b.id}", BOARD_IFNAME),
                far=VethEnd(netns, f"b{j}"),
                link=resolve_link(doc.links.default,
                                  doc.links.kinds[b.kind] if b.kind else LinkSpec(), b.link),
                prefix=spec.prefixes / b.id, reboots=b.reboots)
            for j, b in enumerate(site.boards))
        sites.append(SitePlan(
            name=site_name, index=i, netns=netns, lan=lan, gateway=gateway,
            operator=lan.network_address + OPERATOR_HOST,
            operator_link=VethEnd(None, f"{name}-m{i}"),
            wan_address=backhaul_lan.network_address + i + 1,
            near=VethEnd(netns, WAN_IFNAME), far=VethEnd(core, f"s{i}"),
            backhaul=resolve_link(doc.backhaul, site.backhaul), boards=boards))
    return FieldPlan(name=name, core_netns=core, backhaul_lan=backhaul_lan, sites=tuple(sites),
                     hub=doc.hub or sites[0].name, run_dir=run_root / name)
