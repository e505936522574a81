"""Record folders that no earlier run used: runs/<command>/<UTC time>, and a `latest` link.

`trial` and `simulate` write here when `--out` is not given, so running a command twice never
meets (or replaces) the first run's record.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path


def new_run_folder(root: Path) -> Path:
    """A folder under `root` named by the UTC time (suffixed -2, -3, ... within one second)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out, n = root / stamp, 1
    while out.exists():
        n += 1
        out = root / f"{stamp}-{n}"
    return out


def point_latest(root: Path, out: Path) -> None:
    """Make `root`/latest point at `out` (replaced atomically by a rename)."""
    link, tmp = root / "latest", root / ".latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    tmp.replace(link)
