"""Start a release's agent: point a private config at the bundle's secrets and exec the agent.

Run with the release's venv Python by the supervisor or the systemd unit:
``<release>/venv/bin/python <release>/tools/devices/board/launch.py --prefix P``. Secrets travel
in the bundle as separate 0600 files, never inside the config, which only names them
(`broker.key_file`, `broker.password_file`, `broker.tls.key_file`): the launcher writes the config
the agent reads (``config/.runtime.yaml``, mode 0600, next to the bundled one so relative paths
keep their meaning) and replaces itself with ``python -m edge agent`` (role ``train``) or
``python -m devices.serve`` (role ``infer``). Needs PyYAML, which both roles install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

# <prefix>/state/run_id: the run a trial started this board for (`install.py start --run-id`,
# release.keep_run_id, which names the same file); the agent signs for it from its first
# message, so its will is sealed for the right run too.
RUN_ID_FILE = "run_id"
# bundle secret file -> the broker field naming it in the runtime config (never the secret itself)
SECRET_FIELDS = {"broker_password": "password_file", "fleet_key": "key_file"}


def runtime_config(release: Path) -> Path:
    """Write ``config/.runtime.yaml`` (0600): the bundled config plus its secrets; its path."""
    meta = json.loads((release / "bundle.json").read_text())
    config_path = release / str(meta["config"])
    doc: dict[str, Any] = yaml.safe_load(config_path.read_text()) or {}
    for secret in meta.get("secrets", []):
        name = Path(secret).name
        if name == "tls_key":
            doc.setdefault("broker", {}).setdefault("tls", {})["key_file"] = str(release / secret)
        elif name in SECRET_FIELDS:
            doc.setdefault("broker", {})[SECRET_FIELDS[name]] = str(release / secret)
    out = config_path.with_name(".runtime.yaml")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def command(release: Path, prefix: Path) -> list[str]:
    """Return the agent's command line for this release's role."""
    meta = json.loads((release / "bundle.json").read_text())
    python = str(release / "venv" / "bin" / "python")
    config = str(runtime_config(release))
    state = str(prefix / "state")
    agent = str(meta["agent"])
    if meta["role"] == "infer":
        extra = [f"--{key}={meta[field]}" for key, field in
                 (("profile", "device_profile"), ("provider", "provider")) if meta.get(field)]
        return [python, "-m", "devices.serve", "--model", str(release / "model"), "--config",
                config, "--agent", agent, "--out", state, *extra]
    run_id = prefix / "state" / RUN_ID_FILE
    given = ["--run-id", run_id.read_text().strip()] if run_id.is_file() else []
    return [python, "-m", "edge", "agent", config, "--agent", agent, "--out", state, "--quiet",
            *given]


def main(argv: list[str] | None = None) -> int:
    """Exec the agent of the release this file belongs to."""
    parser = argparse.ArgumentParser(prog="launch.py")
    parser.add_argument("--prefix", required=True, type=Path)
    args = parser.parse_args(argv)
    release = Path(__file__).resolve().parents[3]
    cmd = command(release, args.prefix)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
