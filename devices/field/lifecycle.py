"""`field up` and `field down`: build the namespaces, links, keys, sshd and brokers; remove them.

`field_up` is idempotent (the same description already up and healthy is left alone; a broken
or half-built one is removed and rebuilt) and cleans up after itself when it fails. `field_down`
removes exactly what the state file and the field's names say the field created, and nothing
else. Both need root: network namespaces, veth links, qdiscs and nftables rules are privileged
(CAP_NET_ADMIN, CAP_SYS_ADMIN for the namespace mounts).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devices.field import brokers, daemons, impair, iproute, keys, sshd
from devices.field.inventory import inventory_document, write_inventory
from devices.field.plan import RUN_ROOT, BoardPlan, FieldPlan, SitePlan, VethEnd, plan_field
from devices.field.spec import FieldSpec
from devices.field.state import FieldState, ProcessRecord, load_state, save_state, state_path

Progress = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


class FieldPermissionError(RuntimeError):
    """The caller is not root."""


class FieldConflictError(RuntimeError):
    """The field cannot come up as described: another description is up, or its subnet is taken."""


def require_root(command: str) -> None:
    """Refuse to go on without root, in one line saying why.

    Raises
    ------
    FieldPermissionError
        When the effective user id is not 0.
    """
    if os.geteuid() != 0:
        raise FieldPermissionError(
            f"{command} needs root: it creates network namespaces, veth links, tc qdiscs and "
            "nftables rules (CAP_NET_ADMIN, CAP_SYS_ADMIN); run it with sudo")


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the executables a field runs."""

    sshd: str
    mosquitto: str
    ssh_keygen: str


def resolve_tools(spec: FieldSpec) -> Tools:
    """Find the executables: the file's `tools`, else the Debian ones on PATH or in /usr/sbin.

    Raises
    ------
    FieldConflictError
        Naming the first one missing and the package that provides it.
    """
    found = {}
    for key, name, package in (("sshd", "sshd", "openssh-server"),
                               ("mosquitto", "mosquitto", "mosquitto"),
                               ("ssh_keygen", "ssh-keygen", "openssh-client")):
        given = getattr(spec.doc.tools, key)
        path = given or shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if not path or not os.access(path, os.X_OK):
            raise FieldConflictError(f"{spec.source}: tools.{key}: expected an executable "
                                     f"{given or name} (apt-get install {package})")
        found[key] = os.path.abspath(path)
    return Tools(**found)


@dataclass(frozen=True)
class FieldPaths:
    """Files of a field under its run directory."""

    run_dir: Path

    @property
    def keys(self) -> Path:
        """The folder of the operator's key, authorized_keys and known_hosts."""
        return self.run_dir / "keys"

    @property
    def identity(self) -> Path:
        """The operator's private login key."""
        return self.keys / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        """What every board's sshd accepts."""
        return self.keys / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        """Every board's host key by address."""
        return self.keys / "known_hosts"

    @property
    def inventory(self) -> Path:
        """The deploy inventory of the boards."""
        return self.run_dir / "inventory.yaml"

    def board_dir(self, board: str) -> Path:
        """Folder of one board's sshd config, host key and log."""
        return self.run_dir / "boards" / board

    def site_dir(self, site: str) -> Path:
        """mosquitto.conf and log of one site."""
        return self.run_dir / "sites" / site


@dataclass
class UpResult:
    """What `field_up` did."""

    plan: FieldPlan
    state: FieldState
    paths: FieldPaths
    already_up: bool
    up_s: float
    bridge_probe_s: float = 0.0


@dataclass
class DownResult:
    """What `field_down` removed."""

    namespaces: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    run_dir_removed: bool = False

    @property
    def nothing(self) -> bool:
        """Whether there was nothing to remove."""
        return not (self.namespaces or self.root_links or self.pids or self.run_dir_removed)


def process_alive_in(pid: int, netns: str) -> bool:
    """Whether process `pid` runs inside the named namespace (``ip netns identify``)."""
    try:
        return iproute.run(["ip", "netns", "identify", str(pid)]).strip() == netns
    except iproute.FieldCommandError:
        return False


def healthy(plan: FieldPlan, state: FieldState) -> bool:
    """Whether everything the state records is there: namespaces, root links, live daemons."""
    names = iproute.netns_names()
    return (state.status == "up" and all(ns in names for ns in plan.netns_names)
            and all(iproute.link_exists(VethEnd(None, ln)) for ln in plan.root_links)
            and all(process_alive_in(p.pid, p.netns) for p in state.processes))


def field_up(spec: FieldSpec, run_root: Path = RUN_ROOT, progress: Progress = _quiet) -> UpResult:
    """Bring the field up, or leave it alone when the same description is already up and healthy.

    Raises
    ------
    FieldPermissionError
        Not root.
    FieldConflictError
        Another description of this field is up, its subnet overlaps a root route, or a tool is
        missing.
    FieldCommandError, DaemonError, RuntimeError
        A step failed; everything created so far has been removed.
    """
    require_root("field up")
    plan = plan_field(spec, run_root)
    tools = resolve_tools(spec)
    paths = FieldPaths(plan.run_dir)
    old = load_state(plan.run_dir)
    if old is not None and healthy(plan, old):
        if old.spec_sha256 == spec.text_sha256:
            progress(f"field {plan.name} is already up")
            return UpResult(plan, old, paths, already_up=True, up_s=0.0)
        raise FieldConflictError(
            f"{spec.source}: field: {plan.name} is up from another description "
            f"({old.source}); run `parse-edge field down` first")
    if old is not None or _leftovers(plan):
        progress(f"field {plan.name}: removing what an earlier, unfinished run left")
        _teardown(plan, old, progress)
    _check_subnet(plan, spec)
    start = time.monotonic()
    state = FieldState(field=plan.name, source=spec.source, spec_sha256=spec.text_sha256,
                       run_dir=str(plan.run_dir))
    try:
        probe_s = _build(spec, plan, tools, paths, state, progress)
    except BaseException:
        progress(f"field {plan.name}: up failed; removing what it created")
        try:
            _teardown(plan, state, progress)
        except Exception as exc:  # the first failure is the one to report
            progress(f"field {plan.name}: cleanup after the failure also failed: {exc}")
        raise
    state.status = "up"
    state.up_s = round(time.monotonic() - start, 3)
    save_state(state)
    return UpResult(plan, state, paths, already_up=False, up_s=state.up_s, bridge_probe_s=probe_s)


def field_down(spec: FieldSpec, run_root: Path = RUN_ROOT, progress: Progress = _quiet
               ) -> DownResult:
    """Remove the field: its processes, namespaces, root links and run directory.

    Board prefixes (the boards' installed releases) are kept, as a board's disk would be.

    Raises
    ------
    FieldPermissionError
        Not root.
    """
    require_root("field down")
    plan = plan_field(spec, run_root)
    return _teardown(plan, load_state(plan.run_dir), progress)


def _leftovers(plan: FieldPlan) -> bool:
    names = iproute.netns_names()
    return any(ns in names for ns in plan.netns_names) or \
        any(iproute.link_exists(VethEnd(None, ln)) for ln in plan.root_links) or \
        plan.run_dir.exists()


def _check_subnet(plan: FieldPlan, spec: FieldSpec) -> None:
    import ipaddress

    subnet = ipaddress.IPv4Network(spec.doc.subnet)
    for route in iproute.root_ipv4_routes():
        if route.overlaps(subnet):
            raise FieldConflictError(
                f"{spec.source}: subnet: {subnet} overlaps the route {route} of the root "
                "namespace (another field, or a real network); choose another private /16")


def _record_netns(state: FieldState, name: str) -> None:
    state.netns.append(name)
    save_state(state)
    iproute.netns_add(name)
    # No IPv6 on field links: router solicitations and DAD would add traffic to capped links
    # and counters that no board in the field asked for.
    iproute.run(iproute.netns_exec_argv(name, [
        "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1"]))


def _build(spec: FieldSpec, plan: FieldPlan, tools: Tools, paths: FieldPaths, state: FieldState,
           progress: Progress) -> float:
    plan.run_dir.parent.mkdir(parents=True, mode=0o755, exist_ok=True)
    plan.run_dir.mkdir(mode=0o700, exist_ok=True)
    paths.keys.mkdir(mode=0o700, exist_ok=True)
    save_state(state)
    operator = keys.generate(tools.ssh_keygen, paths.identity, f"parse-edge field {plan.name}")
    keys.write_private(paths.authorized_keys, operator.public_line + "\n")

    _record_netns(state, plan.core_netns)
    iproute.add_bridge(plan.core_netns, "br0")
    for site in plan.sites:
        _build_site(plan, site, state)
        progress(f"site {site.name}: namespace {site.netns}, LAN {site.lan}, "
                 f"backhaul {_describe(site.backhaul.rate_kbit, site.backhaul.loss_percent)}")
    host_keys: list[tuple[str, str]] = []
    for board in plan.boards:
        host_keys.append((str(board.address), _build_board(plan, board, tools, paths, state)))
        progress(f"board {board.id}: {board.address} in {board.netns}, "
                 f"link {_describe(board.link.rate_kbit, board.link.loss_percent)}, sshd up")
    keys.write_private(paths.known_hosts, keys.known_hosts_text(host_keys))
    for site in sorted(plan.sites, key=lambda s: s.name != plan.hub):
        _start_broker(plan, site, tools, paths, state)
        progress(f"site {site.name}: mosquitto on {site.gateway}:1883"
                 f"{' (hub)' if site.name == plan.hub else f', bridged to {plan.hub}'}")
    probe_s = brokers.probe_bridges(plan)
    if len(plan.sites) > 1:
        progress(f"bridges carry messages both ways ({probe_s:.1f} s)")
    write_inventory(paths.inventory,
                    inventory_document(plan, paths.identity, paths.known_hosts,
                                       spec.doc.board_python), plan.name)
    state.inventory = str(paths.inventory)
    return probe_s


def _describe(rate_kbit: float | None, loss_percent: float) -> str:
    rate = f"{rate_kbit:g} kbit/s" if rate_kbit is not None else "uncapped"
    return rate + (f", {loss_percent:g} % loss" if loss_percent else "")


def _build_site(plan: FieldPlan, site: SitePlan, state: FieldState) -> None:
    _record_netns(state, site.netns)
    iproute.add_bridge(site.netns, "br0")
    # The operator (root namespace) joins the site LAN: flash and the trial runner reach every
    # board and the site broker directly, without crossing the backhaul.
    state.root_links.append(site.operator_link.ifname)
    save_state(state)
    iproute.veth_pair(site.operator_link, VethEnd(site.netns, "op0"))
    Path(f"/proc/sys/net/ipv6/conf/{site.operator_link.ifname}/disable_ipv6").write_text("1\n")
    iproute.enslave(VethEnd(site.netns, "op0"), "br0")
    iproute.add_address(site.operator_link, site.operator, site.lan.prefixlen)
    iproute.add_address(VethEnd(site.netns, "br0"), site.gateway, site.lan.prefixlen)
    iproute.veth_pair(site.near, site.far)
    iproute.enslave(site.far, "br0")
    iproute.add_address(site.near, site.wan_address, plan.backhaul_lan.prefixlen)
    impair.apply_link(plan.name, site.near, site.far, site.backhaul)


def _build_board(plan: FieldPlan, board: BoardPlan, tools: Tools, paths: FieldPaths,
                 state: FieldState) -> str:
    _record_netns(state, board.netns)
    iproute.veth_pair(board.near, board.far)
    iproute.enslave(board.far, "br0")
    iproute.add_address(board.near, board.address, board.prefixlen)
    impair.apply_link(plan.name, board.near, board.far, board.link)
    board.prefix.mkdir(parents=True, exist_ok=True)
    folder = paths.board_dir(board.id)
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    host = keys.generate(tools.ssh_keygen, folder / "ssh_host_ed25519_key",
                         f"parse-edge field {plan.name} board {board.id}")
    conf = folder / "sshd_config"
    conf.write_text(sshd.sshd_config(board, host.private, paths.authorized_keys,
                                     folder / "sshd.pid"))
    log = folder / "sshd.log"
    pid = sshd.start_sshd(tools.sshd, board, conf, log)
    state.processes.append(ProcessRecord(role="sshd", owner=board.id, netns=board.netns, pid=pid,
                                         log=str(log)))
    save_state(state)
    return host.public_line


def _start_broker(plan: FieldPlan, site: SitePlan, tools: Tools, paths: FieldPaths,
                  state: FieldState) -> None:
    folder = paths.site_dir(site.name)
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    conf = folder / "mosquitto.conf"
    conf.write_text(brokers.mosquitto_conf(plan, site))
    # mosquitto started as root drops to user `mosquitto` after reading its configuration;
    # the file must stay readable for that first read only.
    log = folder / "mosquitto.log"
    pid = brokers.start_broker(tools.mosquitto, site, conf, log)
    state.processes.append(ProcessRecord(role="mosquitto", owner=site.name, netns=site.netns,
                                         pid=pid, log=str(log)))
    save_state(state)


def _teardown(plan: FieldPlan, state: FieldState | None, progress: Progress) -> DownResult:
    result = DownResult()
    existing = iproute.netns_names()
    recorded = list(state.netns) if state else []
    # Boards first, then sites, then the core: processes go before the links they use.
    namespaces = [ns for ns in dict.fromkeys([*reversed(plan.netns_names), *reversed(recorded)])
                  if ns in existing]
    for ns in namespaces:
        result.pids += daemons.stop_netns_processes(ns)
    for record in state.processes if state else []:
        daemons.reap(record.pid)
    links = dict.fromkeys([*plan.root_links, *(state.root_links if state else [])])
    for link in links:
        end = VethEnd(None, link)
        if iproute.link_exists(end):
            iproute.link_delete(end)
            result.root_links.append(link)
    for ns in namespaces:
        iproute.netns_delete(ns)
        result.namespaces.append(ns)
    if plan.run_dir.exists():
        shutil.rmtree(plan.run_dir)
        result.run_dir_removed = True
    if not result.nothing:
        progress(f"field {plan.name}: stopped {len(result.pids)} process(es), removed "
                 f"{len(result.namespaces)} namespace(s) and {len(result.root_links)} root link(s)")
    return result


__all__ = ["DownResult", "FieldConflictError", "FieldPaths", "FieldPermissionError", "Tools",
           "UpResult", "field_down", "field_up", "healthy", "process_alive_in", "require_root",
           "resolve_tools",
           "state_path"]
