"""The state file of a field that is up: what `field up` created, for `field down` to remove.

``/run/parse-edge/field/<field>/state.json`` lives on tmpfs, like the namespaces it describes:
both vanish at reboot. Every namespace and root link is recorded *before* it is created, so a
`field up` that dies half-way leaves a state file naming at most a few things that do not exist,
never something that exists unrecorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

STATE_FILE = "state.json"


class StateError(RuntimeError):
    """The state file exists but cannot be read: one line naming it."""


class ProcessRecord(BaseModel):
    """A daemon `field up` started."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["sshd", "mosquitto"]
    owner: str          # the board or site it serves
    netns: str
    pid: int = Field(gt=0)
    log: str


class FieldState(BaseModel):
    """Everything one `field up` created, and how far it got."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    field: str
    source: str
    spec_sha256: str
    status: Literal["starting", "up"] = "starting"
    run_dir: str
    netns: list[str] = []
    root_links: list[str] = []
    processes: list[ProcessRecord] = []
    inventory: str | None = None
    up_s: float | None = None


def state_path(run_dir: Path) -> Path:
    """Where a field's state file lives."""
    return run_dir / STATE_FILE


def save_state(state: FieldState) -> None:
    """Write the state file atomically (a temporary file renamed over the old one)."""
    path = state_path(Path(state.run_dir))
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(state.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(run_dir: Path) -> FieldState | None:
    """Read the state of the field whose run directory is `run_dir` (None: it is not up).

    Raises
    ------
    StateError
        When the file exists but is not a valid state file.
    """
    path = state_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: <file>: cannot read the file ({exc.strerror})") from None
    try:
        return FieldState.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        raise StateError(f"{path}: <file>: expected a field state file written by `field up`") \
            from None
