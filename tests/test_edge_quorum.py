"""The start barrier and the agents' life on this host: quorum start, timeout, refusing a finished
agent's folder, the fork server and isolated launchers (never the working directory's `edge/`).

Real agent processes on the machine's Mosquitto (or a private one), forked from the fork server so
that each starts in about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.discovery import AgentStatus, NeighbourTable, encode_status
from broker.topics import status_topic
from edge.cli import main
from edge.learning.rounds import holds_every_update, join_round
from edge.net.quorum import QuorumTimeout, await_start
from edge.trial.launch import ForkServerLauncher, IsolatedLauncher
from edge.trial.processes import AgentProcess, agent_env
from edge.trial.watch import PresenceMonitor
from tests.test_edge_trial import read_rows, write_config

REPO = Path(__file__).resolve().parents[1]


def agent_argv(config: Path, agent: str, url: str, out: Path, *extra: str) -> list[str]:
    return ["agent", str(config), "--agent", agent, "--broker", url, "--out", str(out),
            "--energy", "estimated", *extra]


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_join_round_skips_rounds_whose_updates_are_gone() -> None:
    # Nobody running, or neighbours at round 0: start where we are (round 0 mixes nothing).
    assert join_round(0, []) == 0 and join_round(0, [-1, -1]) == 0 and join_round(0, [0, -1]) == 0
    assert join_round(3, [0]) == 3
    # Neighbours at round 5: their round-4 updates are gone, join at 6 and mix their round 5.
    assert join_round(2, [5, 3, -1]) == 6
    # Neighbours behind us (we were fast, then restarted): our own next round.
    assert join_round(6, [4]) == 6


def _table(fleet: str, statuses: dict[str, tuple[bool, int]]) -> NeighbourTable:
    table = NeighbourTable(fleet, {"a0": ["a1", "a3"], "a1": ["a2"], "a2": ["a3"]})
    for agent, (online, round_idx) in statuses.items():
        table.observe(status_topic(fleet, agent),
                      encode_status(AgentStatus(agent, online, round_idx=round_idx)))
    return table


def test_an_agent_holding_its_neighbours_updates_need_not_skip_rounds() -> None:
    # A restarted agent resuming at 3 needs the round 2 updates of neighbours already past it.
    assert holds_every_update(3, {"a1": 4, "a2": 3}, {"a1": 2, "a2": 1})
    assert not holds_every_update(3, {"a1": 4, "a2": 3}, {"a1": 3, "a2": 2})
    assert not holds_every_update(0, {"a1": 2}, {})
    # A neighbour whose round 2 update is not out yet will still send it: nothing to hold.
    assert holds_every_update(3, {"a1": 2, "a2": -1}, {})


def test_await_start_decides_from_statuses(fleet_name: str) -> None:
    # Prepare
    said: list[str] = []
    ids = ["a0", "a1", "a2", "a3"]
    # Execute / Assert: the quorum (3 of 4, itself included) is there: start at round 0.
    ready = _table(fleet_name, {"a0": (True, -1), "a1": (True, -1), "a2": (True, -1)})
    decision = await_start(ready, "a0", ids, {"a1", "a3"}, 3, 0, 5.0, said.append)
    assert (decision.start_round, decision.online, decision.missed_rounds) == (0, 3, [])
    # A fleet under way (neighbour a1 in round 4): join at 5, missing 2..4, whatever the quorum.
    running = _table(fleet_name, {"a1": (True, 4), "a2": (True, 7), "a3": (False, 6)})
    decision = await_start(running, "a0", ids, {"a1", "a3"}, 4, 2, 5.0, said.append)
    assert (decision.start_round, decision.fleet_round, decision.missed_rounds) == (5, 4, [2, 3, 4])
    # The last of a quorum, slow to read its neighbours' statuses: they started round 0 on its
    # announcement and are in round 2, but their round 0 updates are in its inbox - it starts at 0.
    ahead = _table(fleet_name, {"a1": (True, 2), "a2": (True, -1), "a3": (True, 2)})
    decision = await_start(ahead, "a0", ids, {"a1", "a3"}, 4, 0, 5.0, said.append,
                           held_from=lambda: {"a1": 0, "a3": 0})
    assert (decision.start_round, decision.missed_rounds) == (0, [])
    # Holding only a1's: a3's round 0 is gone, so it joins after them.
    decision = await_start(ahead, "a0", ids, {"a1", "a3"}, 4, 0, 5.0, said.append,
                           held_from=lambda: {"a1": 0, "a3": 1})
    assert (decision.start_round, decision.missed_rounds) == (3, [0, 1, 2])
    # Only a far agent's status has arrived yet: it waits (up to settle_s) to hear its
    # neighbours; none came, and the far agent's updates are not ours to mix: nothing is lost
    # by starting at round 0.
    partial = _table(fleet_name, {"a2": (True, 3)})
    started = time.monotonic()
    decision = await_start(partial, "a0", ids, {"a1", "a3"}, 4, 0, 5.0, said.append, settle_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert (decision.start_round, decision.fleet_round, decision.joined_under_way) == (0, 3, True)
    # Alone: it says so while it waits, then gives up naming who is missing.
    alone = _table(fleet_name, {"a3": (False, -1)})
    with pytest.raises(QuorumTimeout, match=r"quorum not reached after 0.3 s: 1/4 agents online, "
                                            r"need 4; missing a1, a2, a3"):
        await_start(alone, "a0", ids, {"a1", "a3"}, 4, 0, 0.3, said.append)
    assert said[-1] == "waiting for the quorum: 1/4 agents online (need 4); missing a1, a2, a3"


def test_a_late_agent_holds_round_0_until_it_arrives_and_a_lone_one_times_out(
        tmp_path: Path, fleet_name: str, mosquitto_url: str) -> None:
    # Prepare: four agents, quorum "all" (the default); a0-a2 start, a3 comes 4 s later.
    config = write_config(tmp_path, fleet_name, rounds=2, deadline_s=10)
    out = tmp_path / "run"
    launcher = ForkServerLauncher()
    env = agent_env(4)
    procs = {a: AgentProcess(a, agent_argv(config, a, mosquitto_url, out), out / "agents" / a, env,
                             launcher) for a in ("a0", "a1", "a2", "a3")}
    monitor = PresenceMonitor(mosquitto_url, fleet_name, f"test-{fleet_name}").start()
    try:
        # Execute
        for agent in ("a0", "a1", "a2"):
            procs[agent].start()
        wait_for(lambda: all(monitor.snapshot().get(a, None) is not None
                             and monitor.snapshot()[a].online for a in ("a0", "a1", "a2")),
                 60, "a0-a2 online")
        time.sleep(4.0)
        held = {a: monitor.snapshot()[a].round_idx for a in ("a0", "a1", "a2")}
        rows_before = [a for a in ("a0", "a1", "a2") if (out / "agents" / a / "metrics.jsonl").exists()]
        arrived = time.monotonic()
        procs["a3"].start()
        for proc in procs.values():
            assert proc.handle is not None
            assert proc.handle.wait(120) == 0, proc.log_tail()
    finally:
        monitor.stop()
        for proc in procs.values():
            if proc.alive:
                proc.request_stop()
                proc.wait_stopped(10)
    # Assert: nobody ran round 0 before a3 came; then everyone ran every round.
    assert held == {"a0": -1, "a1": -1, "a2": -1} and rows_before == []
    for agent in procs:
        assert [r["round"] for r in read_rows(out / "agents" / agent / "metrics.jsonl")] == [0, 1]
        final = json.loads((out / "agents" / agent / "final.json").read_text())
        assert final["first_round"] == 0 and final["missed_rounds"] == []
    a0 = json.loads((out / "agents" / "a0" / "final.json").read_text())
    assert a0["quorum_wait_s"] >= 4.0 and a0["quorum_wait_s"] <= time.monotonic() - arrived + 60
    log = procs["a0"].log_path.read_text()
    assert "waiting for the quorum: 3/4 agents online (need 4); missing a3" in log
    assert "starting round 0 of 0-1" in log

    # A lone agent (its fleet gone) says it waits, then gives up with exit status 4.
    lone = AgentProcess("a1", agent_argv(config, "a1", mosquitto_url, tmp_path / "lone",
                                         "--start-timeout", "1.5"),
                        tmp_path / "lone" / "agents" / "a1", env, launcher)
    lone.start()
    assert lone.handle is not None and lone.handle.wait(60) == 4
    log = lone.log_path.read_text()
    assert "[a1] waiting for the quorum: 1/4 agents online (need 4); missing a0, a2, a3" in log
    assert "error: a1: quorum not reached after 1.5 s: 1/4 agents online, need 4; missing a0, a2, a3" in log
    assert not (tmp_path / "lone" / "agents" / "a1" / "final.json").exists()


def test_a_finished_agent_folder_is_not_overwritten(tmp_path: Path, fleet_name: str, capsys) -> None:
    # Prepare: a finished agent's record.
    config = write_config(tmp_path, fleet_name)
    folder = tmp_path / "out" / "agents" / "a0"
    folder.mkdir(parents=True)
    (folder / "final.json").write_text('{"agent": "a0"}')
    (folder / "metrics.jsonl").write_text("old rows\n")
    argv = ["agent", str(config), "--agent", "a0", "--broker", "mqtt://127.0.0.1:9", "--out",
            str(tmp_path / "out")]
    # Execute
    rc = main(argv)
    # Assert: refused in one line, nothing touched.
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err == (f"error: {folder}: final.json: this agent already finished; expected a new --out, "
                   "or --force to start it over (its record there is deleted)")
    assert (folder / "final.json").read_text() == '{"agent": "a0"}'
    assert (folder / "metrics.jsonl").read_text() == "old rows\n"


FAKE_EDGE = """
from pathlib import Path
Path(__file__).resolve().parents[1].joinpath("FAKE_EDGE_IMPORTED").write_text("imported")
raise ImportError("the fake edge/ of the working directory was imported")
"""


@pytest.mark.parametrize("isolated", [False, True], ids=["fork-server", "isolated"])
def test_agents_never_import_the_working_directorys_edge_and_stdout_may_close(
        tmp_path: Path, fleet_name: str, isolated: bool) -> None:
    # Prepare: the trial is started from a folder holding a fake `edge` package; its stdout is a
    # pipe whose reader is already gone (`| head -1` that has exited).
    work = tmp_path / "work"
    (work / "edge").mkdir(parents=True)
    (work / "edge" / "__init__.py").write_text(FAKE_EDGE)
    config = write_config(tmp_path, fleet_name, rounds=2, deadline_s=10)
    script = Path(sys.executable).with_name("parse-edge")
    argv = [str(script), "trial", str(config), "--out", str(tmp_path / "trial"), "--no-plots"]
    read_end, write_end = os.pipe()
    os.close(read_end)
    # Execute
    try:
        proc = subprocess.run([*argv, *(["--isolated"] if isolated else [])], cwd=work,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=240)
    finally:
        os.close(write_end)
    # Assert: the trial ran the installed package, completed, and said nothing about the pipe.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (work / "FAKE_EDGE_IMPORTED").exists()
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    summary = json.loads((tmp_path / "trial" / "summary.json").read_text())
    assert summary["trial"]["launcher"] == ("isolated" if isolated else "fork server")
    for agent in ("a0", "a1", "a2", "a3"):
        assert "Traceback" not in (tmp_path / "trial" / "agents" / agent / "agent.log").read_text()
    uss = [a["peak_uss_mib"] for a in summary["strategies"]["parse"]["agents"].values()]
    rss = [a["peak_rss_mb"] for a in summary["strategies"]["parse"]["agents"].values()]
    assert all(0 < u < r for u, r in zip(uss, rss, strict=True))


def test_isolated_launcher_command_puts_the_runners_package_first() -> None:
    command = IsolatedLauncher("/usr/bin/python3").command(["agent", "x.yaml"])
    assert command[:3] == ["/usr/bin/python3", "-I", "-u"]
    assert command[5] == str(REPO) and command[6:] == ["agent", "x.yaml"]
