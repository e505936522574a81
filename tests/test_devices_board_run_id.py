"""A trial's run id on a board: kept for the launcher by a trial's start, forgotten by any other."""

from __future__ import annotations

import json
from pathlib import Path

from devices.board import launch
from devices.board.release import keep_run_id

RUN = "0123456789abcdef0123456789abcdef"


def _release(tmp_path: Path) -> Path:
    release = tmp_path / "releases" / "r1"
    (release / "config").mkdir(parents=True)
    (release / "config" / "fleet.yaml").write_text("fleet: f\n")
    (release / "bundle.json").write_text(json.dumps(
        {"agent": "a0", "role": "train", "config": "config/fleet.yaml", "secrets": []}))
    return release


def test_the_launcher_passes_the_kept_run_id_and_nothing_once_forgotten(tmp_path: Path) -> None:
    release, prefix = _release(tmp_path), tmp_path
    assert "--run-id" not in launch.command(release, prefix)
    keep_run_id(prefix, RUN)                       # a trial's start
    cmd = launch.command(release, prefix)
    assert cmd[cmd.index("--run-id") + 1] == RUN
    assert cmd[cmd.index("--agent") + 1] == "a0"
    keep_run_id(prefix, None)                      # a flash or a start by hand afterwards
    assert "--run-id" not in launch.command(release, prefix)
    keep_run_id(prefix, None)                      # nothing kept: still fine
    assert not (prefix / "state" / launch.RUN_ID_FILE).exists()
