"""Record folders that no earlier run used: runs/<command>/<UTC time>, and a `latest` link.

`trial` and `simulate` write here when `--out` is not given, so running a command twice never
meets (or replaces) the first run's record, even when two start in the same second.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from edge.errors import UserError


def new_run_folder(root: Path) -> Path:
    """Create and return a folder under `root` named by the UTC time (-2, -3, ... within a second).

    Created here (mkdir without exist_ok), not only named: two runs started in the same second
    would otherwise both find the name free and write one record over the other.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        out = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()
        except FileExistsError:
            n += 1
            continue
        return out


def point_latest(root: Path, out: Path) -> None:
    """Make `root`/latest point at `out` (replaced atomically by a rename)."""
    link, tmp = root / "latest", root / f".latest.{os.getpid()}.tmp"  # one temporary per process
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    tmp.replace(link)


def check_out_folder(out: Path) -> None:
    """Refuse an `--out` that cannot be a folder: an existing file, or a path through one.

    Raises
    ------
    UserError
        One line naming `--out`.
    """
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--out {out}: expected a folder, but {path} is a file")
            return
