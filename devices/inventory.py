"""Board inventories: agent id -> how to reach its board, validated with pydantic v2.

``boards.yaml``::

    defaults:                       # optional; every field below may also be set per board
      user: pi
      port: 22
      identity: ~/.ssh/parse_edge   # private key (ssh -i)
      known_hosts: ~/.ssh/known_hosts
      prefix: /opt/parse-edge       # releases/, current, state/ live here
      python: python3               # board interpreter (runs the tools, makes venvs)
    boards:
      a0: {host: 10.0.0.11}
      a1: {host: 10.0.0.12, user: root, port: 2222, prefix: /srv/parse-edge}

Ansible: a host of an Ansible inventory maps field by field — ``ansible_host`` -> ``host``,
``ansible_user`` -> ``user``, ``ansible_port`` -> ``port``, ``ansible_ssh_private_key_file`` ->
``identity``, ``ansible_python_interpreter`` -> ``python``, and the host variables
``parse_edge_agent`` (the agent id; default: the inventory host name) and ``parse_edge_prefix``
-> ``prefix``. :func:`from_ansible` reads such a YAML inventory (groups nested under
``children`` included).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from devices.flash import DEFAULT_PREFIX, Board
from devices.ssh import SshOptions, SshTarget

AgentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")


class InventoryError(ValueError):
    """An inventory is unusable: ``<file>: <field>: <expected>`` in one line."""


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    identity: str | None = None
    known_hosts: str | None = None
    prefix: Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$")] | None = None
    python: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None


class BoardEntry(_Fields):
    """One board: `host` plus any field of the defaults."""

    host: Annotated[str, StringConstraints(pattern=HOST.pattern)]


class InventoryFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: _Fields = _Fields()
    boards: dict[AgentId, BoardEntry] = Field(min_length=1)


class Inventory:
    """Validated boards with defaults applied, in file order."""

    def __init__(self, source: str, doc: InventoryFile) -> None:
        self.source = source
        self.doc = doc

    def __iter__(self) -> Iterator[str]:
        """Iterate over agent ids in file order."""
        return iter(self.doc.boards)

    def __len__(self) -> int:
        """Count the boards."""
        return len(self.doc.boards)

    def _value(self, agent: str, name: str, default: Any) -> Any:
        own = getattr(self.doc.boards[agent], name)
        if own is not None:
            return own
        shared = getattr(self.doc.defaults, name)
        return shared if shared is not None else default

    def board(self, agent: str) -> Board:
        """Where `agent` is flashed."""
        entry = self.doc.boards[agent]
        target = SshTarget(entry.host, self._value(agent, "user", None),
                           int(self._value(agent, "port", 22)))
        return Board(agent, target, str(self._value(agent, "prefix", DEFAULT_PREFIX)),
                     str(self._value(agent, "python", "python3")))

    def ssh_options(self, agent: str, base: SshOptions) -> SshOptions:
        """Return `base` with this board's identity and known_hosts file where the inventory sets them."""
        identity = self._value(agent, "identity", None)
        known = self._value(agent, "known_hosts", None)
        return SshOptions(
            identity=Path(identity).expanduser() if identity else base.identity,
            known_hosts=Path(known).expanduser() if known else base.known_hosts,
            config_file=base.config_file, connect_timeout_s=base.connect_timeout_s,
            executable=base.executable)


def parse_inventory(raw: object, source: str) -> Inventory:
    """Validate a parsed YAML document.

    Raises
    ------
    InventoryError
        ``<source>: <field path>: <expected>`` for the first problem pydantic reports.
    """
    try:
        return Inventory(source, InventoryFile.model_validate(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; expected host, user, port, identity, known_hosts, prefix, python"
        elif loc[-1:] == ["[key]"]:  # a board name that is no agent id
            loc, msg = loc[:-1], "expected an agent id [A-Za-z0-9_-]{1,64}"
        elif loc[-1:] == ["prefix"]:
            msg = "expected an absolute path on the board"
        where = ".".join(loc) or "<top level>"
        raise InventoryError(f"{source}: {where}: {msg}") from None


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory file.

    Raises
    ------
    InventoryError
        On an unreadable file, bad YAML or an invalid field.
    """
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InventoryError(f"{source}: <file>: cannot read the file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: <file>: expected valid YAML ({exc})") from None
    return parse_inventory(raw, source)


ANSIBLE_FIELDS = {"ansible_host": "host", "ansible_user": "user", "ansible_port": "port",
                  "ansible_ssh_private_key_file": "identity",
                  "ansible_python_interpreter": "python", "parse_edge_prefix": "prefix"}


def _ansible_hosts(group: Mapping[str, Any], inherited: dict[str, Any]
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
    group_vars = {**inherited, **(group.get("vars") or {})}
    for name, host_vars in (group.get("hosts") or {}).items():
        yield str(name), {**group_vars, **(host_vars or {})}
    for child in (group.get("children") or {}).values():
        yield from _ansible_hosts(child or {}, group_vars)


def from_ansible(path: str | Path) -> Inventory:
    """Read an Ansible YAML inventory as ours (see the module docstring for the mapping).

    Raises
    ------
    InventoryError
        On an unreadable file or a host whose variables give an invalid board.
    """
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{source}: <file>: expected a readable YAML inventory ({exc})") \
            from None
    boards: dict[str, dict[str, Any]] = {}
    for group in raw.values() if isinstance(raw, dict) else []:
        for host, host_vars in _ansible_hosts(group or {}, {}):
            agent = str(host_vars.get("parse_edge_agent", host))
            entry = {ours: host_vars[theirs] for theirs, ours in ANSIBLE_FIELDS.items()
                     if theirs in host_vars}
            entry.setdefault("host", host)
            boards[agent] = entry
    return parse_inventory({"boards": boards}, source)
