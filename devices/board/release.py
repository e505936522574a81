"""Releases on a board: start, health-check, switch ``current``, roll back, report (stdlib only).

Layout under the prefix::

    releases/<version>-<bundle sha256[:12]>/   one complete release: bundle files, venv/, .installed
    current -> releases/...                      the release that runs (switched by rename)
    previous -> releases/...                     the one before (for rollback)
    incoming/  state/ (agent --out)  run/ (supervisor)  log/agent.log

``current`` only moves once the new release runs: the new release is started from its own
directory, and if it does not stay up for the health window it is stopped and the release that
ran before is started again, with ``current`` untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The launcher (launch.py, run with only its own folder on the path) reads the same file name.
RUN_ID_FILE = "run_id"

HEALTH_S = 10.0
TOOLS = Path("tools") / "devices" / "board"  # where a release keeps these scripts


class BoardError(Exception):
    """A step failed; the message is one line saying what was expected."""


def say(step: str, detail: str) -> None:
    """One progress line, relayed by flash with the board's name in front."""
    print(f"{step}: {detail}", flush=True)


def init_system() -> str:
    """'systemd' when PID 1 is systemd (see sd_booted(3)), else 'supervisor'."""
    return "systemd" if Path("/run/systemd/system").is_dir() else "supervisor"


def link_target(link: Path) -> str | None:
    """Return the release name a link (``current``, ``previous``) points at, or None."""
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def switch_link(prefix: Path, link: str, name: str) -> None:
    """Point `prefix/link` at releases/`name` atomically: a new symlink renamed over the old."""
    tmp = prefix / f".{link}.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("releases") / name)
    os.replace(tmp, prefix / link)


@contextlib.contextmanager
def locked(prefix: Path) -> Iterator[None]:
    """Hold the prefix's flash lock (one flash at a time), or raise BoardError at once."""
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BoardError(f"{prefix}: another flash holds the lock; expected one at a time") \
                from None
        yield


def read_meta(release: Path) -> dict[str, Any]:
    """Read the bundle.json of an installed release."""
    meta: dict[str, Any] = json.loads((release / "bundle.json").read_text())
    return meta


def _unit(prefix: Path, name: str) -> str:
    agent = str(read_meta(prefix / "releases" / name)["agent"])
    return f"parse-edge-{agent}@{name}.service"


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True)


def _start(prefix: Path, name: str, init: str, python: str) -> None:
    release = prefix / "releases" / name
    (prefix / "log").mkdir(parents=True, exist_ok=True)
    (prefix / "state").mkdir(parents=True, exist_ok=True)
    command = [str(release / "venv" / "bin" / "python"), str(release / TOOLS / "launch.py"),
               "--prefix", str(prefix)]
    if init == "systemd":
        template = (release / "parse-edge-agent@.service").read_text()
        agent = str(read_meta(release)["agent"])
        unit_path = Path("/etc/systemd/system") / f"parse-edge-{agent}@.service"
        unit_path.write_text(template.replace("@PREFIX@", str(prefix)))
        _systemctl("daemon-reload")
        proc = _systemctl("enable", "--now", _unit(prefix, name))
        if proc.returncode != 0:
            raise BoardError(f"systemctl enable --now {_unit(prefix, name)}: "
                             f"{proc.stderr.strip()}")
        return
    proc = subprocess.run([python, str(release / TOOLS / "supervisor.py"), "start", "--run-dir",
                           str(prefix / "run"), "--log", str(prefix / "log" / "agent.log"),
                           "--release", name, "--", *command], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BoardError(f"supervisor start: {proc.stderr.strip() or proc.returncode}")


def stop(prefix: Path, name: str | None, init: str, python: str) -> None:
    """Stop the agent of release `name` (systemd unit or supervisor)."""
    if init == "systemd":
        if name:
            _systemctl("disable", "--now", _unit(prefix, name))
        return
    script = prefix / "releases" / name / TOOLS / "supervisor.py" if name else None
    if script is None or not script.exists():
        return
    subprocess.run([python, str(script), "stop", "--run-dir", str(prefix / "run")],
                   capture_output=True, text=True)


def _supervisor_state(prefix: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((prefix / "run" / "state.json").read_text())
        pid = int((prefix / "run" / "supervisor.pid").read_text())
        os.kill(pid, 0)
        state["running"] = True
    except (OSError, ValueError):
        state = {"running": False}
    return state


def running(prefix: Path) -> bool:
    """Whether the agent of the current release runs (systemd unit active / supervisor alive)."""
    name = link_target(prefix / "current")
    if init_system() == "systemd":
        return name is not None and _systemctl("is-active", "--quiet", _unit(prefix, name)).returncode == 0
    return bool(_supervisor_state(prefix).get("running"))


def _healthy(prefix: Path, name: str, init: str, health_s: float) -> str | None:
    """None when the agent stayed up (or finished cleanly) for `health_s`; else why not."""
    deadline = time.monotonic() + health_s
    while True:
        if init == "systemd":
            unit = _unit(prefix, name)
            restarts = _systemctl("show", "-p", "NRestarts", "--value", unit).stdout.strip()
            if restarts not in ("", "0"):
                return f"{unit} restarted {restarts} times"
            if _systemctl("is-failed", "--quiet", unit).returncode == 0:
                return f"{unit} failed"
        else:
            state = _supervisor_state(prefix)
            if int(state.get("restarts") or 0) > 0 or (
                    not state["running"] and not state.get("finished")):
                return f"agent exited with status {state.get('last_exit')}"
            if state.get("finished"):
                return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def _log_tail(prefix: Path) -> str:
    try:
        lines = [ln for ln in (prefix / "log" / "agent.log").read_text().splitlines()
                 if ln.strip() and not ln.startswith("[supervisor")]
    except OSError:
        return ""
    return f"; log: {lines[-1][:200]}" if lines else ""


def activate(prefix: Path, name: str, start: bool, health_s: float, python: str) -> str:
    """Make release `name` current and (re)start it; 'no-op' when it already is and runs.

    The new release is started before `current` moves; when it does not stay up for `health_s`
    it is stopped, the previous release is started again and BoardError is raised.
    """
    release = prefix / "releases" / name
    if not (release / ".installed").exists():
        raise BoardError(f"release {name}: not installed under {prefix}/releases")
    init = init_system()
    old = link_target(prefix / "current")
    if old == name and (not start or running(prefix)):
        say("activate", f"release {name} is already current{' and running' if start else ''}")
        return "no-op"
    if start:
        (prefix / "log").mkdir(parents=True, exist_ok=True)
        stop(prefix, old, init, python)
        keep_run_id(prefix, None)  # a flashed release is not a trial's start: no trial's run
        with (prefix / "log" / "agent.log").open("a") as log:
            log.write(f"[flash] starting release {name}\n")
        _start(prefix, name, init, python)
        problem = _healthy(prefix, name, init, health_s)
        if problem:
            tail = _log_tail(prefix)
            stop(prefix, name, init, python)
            if old and old != name:
                _start(prefix, old, init, python)
                say("revert", f"release {old} restarted, current unchanged")
            raise BoardError(f"release {name} did not stay up for {health_s:g} s: {problem}{tail}")
        say("start", f"agent runs under {init}")
    if old and old != name:
        switch_link(prefix, "previous", old)
    switch_link(prefix, "current", name)
    say("switch", f"current -> releases/{name}" + (f" (previous: {old})" if old else ""))
    return "switched"


def keep_run_id(prefix: Path, run_id: str | None) -> None:
    """Keep `run_id` for the launcher (``<prefix>/state/run_id``), or forget the one kept.

    Only a trial's start names a run; every other start (a flash, a start by hand) forgets the
    last trial's, so a later agent never signs for a run that is over. Supervisor restarts do not
    come here: a restarted agent keeps its trial's run.
    """
    path = prefix / "state" / RUN_ID_FILE
    if run_id is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")


def start_current(prefix: Path, python: str, fresh: bool = False, run_id: str | None = None) -> str:
    """Start the agent of the ``current`` release (a trial starting a flashed fleet at once).

    `fresh` first removes ``<prefix>/state`` (the agent's metrics, checkpoint and final.json), so
    the agent starts from round 0 instead of resuming or refusing a finished folder. `run_id`
    (32 hex digits, the trial's run) is kept in ``<prefix>/state/run_id`` and passed to the agent
    on every start by the launcher, restarts included. Returns 'started', or 'running' when the
    agent already runs (nothing is touched then).

    Raises
    ------
    BoardError
        When there is no current release, or the supervisor does not start.
    """
    name = link_target(prefix / "current")
    if not name:
        raise BoardError(f"{prefix}: no current release to start (flash one first)")
    if running(prefix):
        say("start", f"release {name} already runs; left alone")
        return "running"
    if fresh:
        shutil.rmtree(prefix / "state", ignore_errors=True)
    keep_run_id(prefix, run_id)
    (prefix / "log").mkdir(parents=True, exist_ok=True)
    with (prefix / "log" / "agent.log").open("a") as log:
        log.write(f"[trial] starting release {name}{' with a fresh state' if fresh else ''}\n")
    _start(prefix, name, init_system(), python)
    say("start", f"agent of release {name} runs under {init_system()}")
    return "started"


def rollback(prefix: Path, start: bool, health_s: float, python: str) -> str:
    """Switch back to the previous release (and restart it); returns its name."""
    previous = link_target(prefix / "previous")
    current = link_target(prefix / "current")
    if not previous or not (prefix / "releases" / previous / ".installed").exists():
        raise BoardError(f"{prefix}: no previous release to roll back to")
    activate(prefix, previous, start, health_s, python)
    if current:
        switch_link(prefix, "previous", current)
    return previous


def status(prefix: Path) -> dict[str, Any]:
    """Report the current release, whether the agent runs, and its last metrics line."""
    name = link_target(prefix / "current")
    doc: dict[str, Any] = {"current": name, "previous": link_target(prefix / "previous"),
                              "init": init_system(), "running": running(prefix),
                              "pid": None, "restarts": None, "last_metrics": None, "agent": None}
    if init_system() == "supervisor":
        state = _supervisor_state(prefix)
        doc["pid"], doc["restarts"] = state.get("child_pid"), state.get("restarts")
    if name:
        meta = read_meta(prefix / "releases" / name)
        doc["agent"], doc["role"] = meta.get("agent"), meta.get("role")
        doc["last_metrics"] = _last_line(prefix / "state" / "agents" / str(meta.get("agent"))
                                         / "metrics.jsonl")
    return doc


def _last_line(path: Path, block: int = 65536) -> object:
    """Read the last JSON line of a metrics file (at most `block` bytes from its end)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - block))
            lines = f.read().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
