"""The board supervisor: restart with backoff on failure, not after a clean exit, stop."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

from devices.board import supervisor


def wait_for(predicate, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_failing_child_is_restarted_with_growing_backoff_and_stop_ends_it(tmp_path: Path):
    run = tmp_path / "run"
    marks = tmp_path / "starts"
    child = f"import time; open({str(marks)!r}, 'a').write(f'{{time.monotonic()}}\\n'); exit(3)"
    assert supervisor.start(run, tmp_path / "log" / "agent.log", "r1",
                            [sys.executable, "-c", child]) == 0
    try:
        wait_for(lambda: supervisor.read_state(run).get("restarts", 0) >= 3, 20)
    finally:
        state = supervisor.read_state(run)
        supervisor.stop(run)
    assert state["running"] and state["last_exit"] == 3 and state["release"] == "r1"
    starts = [float(x) for x in marks.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.8  # backoff 1 s, then 2 s
    log = (tmp_path / "log" / "agent.log").read_text()
    assert "child exited with status 3; restarting in 1 s" in log
    assert not supervisor.read_state(run)["running"]
    assert not (run / "supervisor.pid").exists()


def test_a_clean_exit_is_not_restarted(tmp_path: Path):
    run = tmp_path / "run"
    assert supervisor.start(run, tmp_path / "agent.log", "r1",
                            [sys.executable, "-c", "print('done')"]) == 0
    wait_for(lambda: not supervisor.read_state(run)["running"])
    state = supervisor.read_state(run)
    assert state["finished"] and state["restarts"] == 0 and state["last_exit"] == 0
    assert "done" in (tmp_path / "agent.log").read_text()


def test_stop_forwards_sigterm_to_the_child(tmp_path: Path):
    run = tmp_path / "run"
    out = tmp_path / "got-term"
    child = ("import signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(out)!r}, 'w').write('x'), "
             "sys.exit(0)))\nwhile True: time.sleep(0.1)\n")
    supervisor.start(run, tmp_path / "agent.log", "r1", [sys.executable, "-c", child])
    wait_for(lambda: supervisor.read_state(run).get("child_pid") is not None)
    time.sleep(0.3)  # let the child install its handler
    assert supervisor.stop(run)
    assert out.read_text() == "x"
    assert supervisor.start(run, tmp_path / "agent.log", "r2", [sys.executable, "-c", "1"]) == 0
