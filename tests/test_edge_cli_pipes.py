"""Every command that prints ends cleanly when its reader has gone (`parse-edge ... | head -1`):
its own exit status, no traceback. The reader is made to be gone for sure: stdout is a pipe whose
read end is closed before the command starts, so the first write fails with EPIPE.
(`parse-edge trial` is covered with the working-directory test in tests/test_edge_quorum.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_edge_trial import write_config

PARSE_EDGE = str(Path(sys.executable).with_name("parse-edge"))


def closed_pipe_run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([PARSE_EDGE, *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, cwd=cwd, timeout=300)
    finally:
        os.close(write_end)


def check_clean(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, (what, proc.stderr)
    assert "Exception ignored" not in proc.stderr, (what, proc.stderr)


def test_every_printing_command_survives_a_closed_pipe(tmp_path: Path, fleet_name: str,
                                                        mosquitto_url: str) -> None:
    # Prepare
    config = write_config(tmp_path, fleet_name, rounds=1, deadline_s=5)
    # Execute / Assert: the light commands.
    for argv in (["--help"], ["--version"], ["devices"], ["config", "check", str(config)],
                 ["broker", "mosquitto-conf", str(config), "--out", str(tmp_path / "mq")]):
        check_clean(closed_pipe_run(argv, tmp_path), " ".join(argv))
    # simulate (with checkpoints) -> export -> infer, table and JSON lines.
    sim = tmp_path / "sim"
    check_clean(closed_pipe_run(["simulate", str(config), "--out", str(sim), "--save-checkpoints",
                                 "--quiet"], tmp_path), "simulate")
    assert json.loads((sim / "summary.json").read_text())["strategies"]["parse"]["rounds"] == 1
    bundle = tmp_path / "bundle"
    check_clean(closed_pipe_run(["export", str(sim / "agents" / "a2" / "checkpoint.pt"), "--out",
                                 str(bundle)], tmp_path), "export")
    manifest = json.loads((bundle / "manifest.json").read_text())
    inputs = tmp_path / "inputs.npz"
    rng = np.random.default_rng(0)
    np.savez(inputs, **{m: rng.normal(size=(50, *spec["shape"][1:])).astype(np.float32)
                        for m, spec in manifest["inputs"].items()})
    for extra in ([], ["--json"]):
        check_clean(closed_pipe_run(["infer", str(bundle), str(inputs), *extra], tmp_path),
                    f"infer {extra}")
    # A standalone agent (quorum 1: it may start alone) prints its result last.
    check_clean(closed_pipe_run(["agent", str(config), "--agent", "a0", "--broker", mosquitto_url,
                                 "--out", str(tmp_path / "agent"), "--quorum", "1"], tmp_path), "agent")
    assert (tmp_path / "agent" / "agents" / "a0" / "final.json").exists()


def test_head_1_in_a_shell_pipeline_exits_zero(tmp_path: Path, fleet_name: str) -> None:
    # Prepare
    config = write_config(tmp_path, fleet_name)
    # Execute: as a user types it, with pipefail so that parse-edge's own status counts.
    proc = subprocess.run(["bash", "-o", "pipefail", "-c",
                           f"'{PARSE_EDGE}' config check '{config}' | head -1"],
                          capture_output=True, text=True, timeout=120)
    # Assert
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"config {config}: OK\n" and proc.stderr == ""
