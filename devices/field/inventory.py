"""The field's boards as a deploy inventory (agent id -> host, port, user, identity, prefix).

The format is the one `parse-edge flash --inventory` reads (`devices.inventory` on the deploy
branch): ``defaults`` for what every board shares, ``boards`` for each board's address and
prefix. Nothing in it is specific to a field, which is the point: the same flash that installs
into a Raspberry Pi installs into a field board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from devices.field.plan import SSH_PORT, FieldPlan

LOGIN_USER = "root"


def inventory_document(plan: FieldPlan, identity: Path, known_hosts: Path,
                       board_python: str | None = None) -> dict[str, Any]:
    """Build the inventory as a mapping ready for YAML.

    Parameters
    ----------
    plan : FieldPlan
        The field.
    identity, known_hosts : Path
        The field's private login key and the known_hosts file listing every board's host key.
    board_python : str or None
        The interpreter boards make venvs with (the inventory's ``python``); None leaves the
        deploy's default (``python3``).
    """
    defaults: dict[str, Any] = {"user": LOGIN_USER, "port": SSH_PORT, "identity": str(identity),
                                "known_hosts": str(known_hosts)}
    if board_python:
        defaults["python"] = board_python
    boards = {b.id: {"host": str(b.address), "prefix": str(b.prefix)} for b in plan.boards}
    return {"defaults": defaults, "boards": boards}


def write_inventory(path: Path, document: dict[str, Any], field: str) -> None:
    """Write the inventory YAML with a header saying where it comes from."""
    header = (f"# Inventory of parse-edge field {field}: valid while the field is up\n"
              f"# (`parse-edge field down` removes it with the keys it names).\n")
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
