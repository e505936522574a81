"""`parse-edge trial FIELD.yaml` for real: a field of 4 boards in 2 bridged sites, flashed over SSH.

One trial (module fixture, ~35 s on 2 cores) serves every check: its field is brought up by the
trial, every board flashed over SSH into its namespace and started by its supervisor, and the
field taken down at the end. Board a1's link loses 10 % of its frames each way; board a3's link
is down for rounds 2-3. The fleet is tiny (synthetic-pid, 4 multimodal agents on a ring,
7 rounds) but its rounds take long enough (local training) for the runner to cut a link between
two rounds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices.field import iproute
from devices.field.plan import plan_field
from devices.field.spec import load_field
from edge.trial.field_record import FRAME_HEADER_BYTES, PUBACK_BYTES, interface_vs_mqtt
from tests.field_support import free_subnet, leftovers, unique_field_name

ROUNDS = 7
OUTAGE = (2, 4)             # a3's link is down for rounds 2 and 3
LOSSY, CUT = "a1", "a3"
REBOOT_ROUND = 3
# CONNECT (with a login and a signed last will when the fleet is signed), SUBSCRIBEs and the
# publish probe's SUBSCRIBE/UNSUBSCRIBE, pings, DISCONNECT: under 4 kB per agent.
CONTROL_BYTES = 4096


def write_files(root: Path, fleet: str, name: str) -> Path:
    """A fleet config and a field file naming it; returns the field file."""
    (root / "fleet.yaml").write_text(
        f"fleet: {fleet}\ndata:\n  dataset: synthetic-pid\n  synthetic: {{modalities: [a, b], "
        "n_samples: 3000, dim: 8}\nagents: {count: 4, multimodal_fraction: 1.0}\n"
        f"topology: {{kind: ring}}\ntraining: {{rounds: {ROUNDS}, local_epochs: 12, "
        "batch_size: 32}\ncomm: {deadline_s: 3}\nbroker: {url: 'mqtt://127.0.0.1:1883'}\n")
    doc = {"field": name, "fleet": "fleet.yaml", "subnet": free_subnet(),
           "prefixes": str(root / "prefixes"),
           "links": {"default": {"rate_kbit": 4000}}, "backhaul": {"rate_kbit": 2000},
           "sites": {"north": {"boards": ["a0", {"id": LOSSY, "link": {"loss_percent": 10}}]},
                     "south": {"boards": ["a2", {"id": CUT, "link": {
                         "outages": [{"round": OUTAGE[0], "up_round": OUTAGE[1]}]}}]}}}
    path = root / "field.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _field_pids(name: str) -> list[str]:
    """Processes whose command line names the field (sshd, mosquitto, agents under prefixes)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if f"/{name}/" in ln or f"-{name}-" in ln]


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the trial once through the CLI; what it wrote and what was left afterwards."""
    from edge.cli import main

    root = tmp_path_factory.mktemp("fieldtrial")
    name = unique_field_name()
    field_file = write_files(root, f"ft-{name}", name)
    spec = load_field(field_file)
    plan = plan_field(spec)
    out = root / "out"
    try:
        console = io.StringIO()
        with contextlib.redirect_stderr(console):
            code = main(["trial", str(field_file), "--out", str(out), "--plain"])
        left = leftovers(plan, [])
        procs = _field_pids(name)
        yield {"code": code, "out": out, "plan": plan, "left": left, "procs": procs,
               "console": console.getvalue(),
               "doc": json.loads((out / "summary.json").read_text()),
               "report": (out / "report.md").read_text(),
               "rows": [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]}
    finally:
        from devices.field.lifecycle import field_down

        field_down(spec)


def test_four_boards_two_sites_flashed_over_ssh_run_to_completion_and_leave_nothing(trial):
    assert trial["code"] == 0, trial["report"][:3000]
    doc = trial["doc"]
    assert doc["trial"]["status"] == "completed"
    field = doc["trial"]["field"]
    assert set(field["sites"]) == {"north", "south"}
    # Flashed over SSH into each board's prefix: a release per board, installed by flash.
    for board, info in field["boards"].items():
        assert info["flash"] in ("installed", "switched", "no-op") and info["release"], info
        prefix = Path(trial["plan"].board(board).prefix)
        assert (prefix / "current").is_symlink() and (prefix / "releases" / info["release"]).is_dir()
    agents = doc["strategies"][doc["trial"]["strategy"]]["agents"]
    assert all(a["rounds_completed"] == ROUNDS for a in agents.values()), agents
    # The runner's run id went to every board over SSH, which keeps it for its agent's starts
    # (the agent signs for it from its first message, its will included).
    found = re.search(r"\brun ([0-9a-f]{32});", trial["report"])   # the report's security line
    assert found is not None
    run_id = found.group(1)
    for board in field["boards"]:
        state = Path(trial["plan"].board(board).prefix) / "state" / "run_id"
        assert state.read_text().strip() == run_id, board
    # Each agent's own files came back from its board, over SSH (not read from its prefix).
    assert "read from its prefix" not in trial["console"]
    assert "flashed 4 boards" in trial["console"] and "taken down" in trial["console"]
    for board in field["boards"]:
        final = json.loads((trial["out"] / "agents" / board / "final.json").read_text())
        assert final["agent"] == board and final["rounds_completed"] == ROUNDS
    # Torn down: no namespace, link, qdisc, nft table, run dir or process of the field left.
    assert trial["left"] == [], trial["left"]
    assert trial["procs"] == [], trial["procs"]
    names = iproute.netns_names()
    assert not any(ns.startswith(f"{trial['plan'].name}-") for ns in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{trial['plan'].name}-" not in links
    assert "## Virtual field" in trial["report"]
    png = trial["out"] / "plots" / "field_bytes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(plots/field_bytes.png)" in trial["report"]


def test_ten_percent_loss_loses_no_round(trial):
    rows = [r for r in trial["rows"] if r["agent"] == LOSSY]
    assert sorted(int(r["round"]) for r in rows) == list(range(ROUNDS))
    info = trial["doc"]["trial"]["field"]["boards"][LOSSY]
    assert info["link"]["loss_percent"] == 10
    agent = trial["doc"]["strategies"][trial["doc"]["trial"]["strategy"]]["agents"][LOSSY]
    assert agent["rounds_missed"] == [] and agent["completed_all"]
    # The loss was real: the frames TCP sent again show as interface bytes beyond the model.
    assert info["tx"]["residual_bytes"] > PUBACK_BYTES * info["mqtt"]["received_messages"] \
        + CONTROL_BYTES


def test_link_down_for_two_rounds_shows_as_missed_mixes_of_those_rounds(trial):
    (fault,) = [f for f in trial["doc"]["trial"]["field"]["faults"] if f["target"] == CUT]
    assert fault["kind"] == "link-down" and fault["status"] == "injected", fault
    r, u = OUTAGE
    # Exactly the exchanges mixed in rounds r..u-1 miss the board: the board reconnects as soon
    # as its carrier is back (broker.carrier) instead of waiting out TCP's retransmission
    # back-off, which used to spill the outage into round u, and the broker hands the new
    # connection the session's undelivered updates (MQTT 5 session expiry).
    missed = fault["missed_mix_rounds"]
    assert missed == list(range(r, u)), missed
    finals = {b: json.loads((trial["out"] / "agents" / b / "final.json").read_text())
              for b in ("a0", "a1", "a2", CUT)}
    assert finals[CUT]["link_returns"] == 1 and finals[CUT]["connections"] == 2, finals[CUT]
    assert all(finals[b]["link_returns"] == 0 and finals[b]["connections"] == 1
               for b in ("a0", "a1", "a2")), finals
    assert not [x for x in trial["doc"]["trial"]["field"]["boards"][CUT]["missed_mix_rounds"]
                if x < r]
    rows = {(x["agent"], int(x["round"])): x for x in trial["rows"]}
    for neighbour in ("a0", "a2"):
        assert CUT in rows[(neighbour, r - 1)]["mixed_from"]["enc/a"]
        for k in range(r, u):
            assert CUT not in rows[(neighbour, k)]["mixed_from"].get("enc/a", [])
        assert CUT in rows[(neighbour, ROUNDS - 1)]["mixed_from"]["enc/a"]  # mixed again
    for k in range(r, u):
        assert rows[(CUT, k)]["mixed_from"] == {}       # it heard nobody while down
    # The faults section points at the field's faults rather than saying there were none.
    assert "No faults were configured" not in trial["report"]
    pointer = "the field file's 1 link fault(s) are in the Virtual field section above"
    assert trial["report"].index("## Virtual field") < trial["report"].index(pointer)
    line = next(ln for ln in trial["report"].splitlines() if ln.startswith("| link-down"))
    assert f"mixes missed in rounds {r}-{u - 1};" in line  # ranges, as every other round list
    assert line.count(CUT) == 1  # the target is named once, in its own column
    (down,) = [e for e in trial["doc"]["trial"]["events"]
               if e["kind"] == "fault" and "link down" in e["detail"]]
    assert down["agent"] == CUT and CUT not in down["detail"]  # console: "fault: a3: link down"
    assert f"fault: {CUT}: link down before the updates round {r} mixes" in trial["console"]


def test_interface_bytes_match_the_mqtt_counters_within_the_protocol_overhead(trial):
    boards = trial["doc"]["trial"]["field"]["boards"]
    checked = 0
    for board, info in boards.items():
        if board in (LOSSY, CUT):
            continue  # retransmissions (loss) and an outage's resent data are beyond the model
        iface, mqtt = info["interface"], info["mqtt"]
        # Every MQTT byte crossed the interface, plus 66 B of headers per frame, plus the
        # control packets: a 4 B PUBACK per QoS 1 message received, CONNECT, SUBSCRIBE, pings.
        residual = iface["tx_bytes"] - mqtt["sent_bytes"] - FRAME_HEADER_BYTES * iface["tx_packets"]
        assert residual == info["tx"]["residual_bytes"]
        assert 0 <= residual <= PUBACK_BYTES * mqtt["received_messages"] + CONTROL_BYTES, info
        assert iface["rx_bytes"] >= mqtt["received_bytes"] + FRAME_HEADER_BYTES * 0
        assert 1.0 < info["tx"]["overhead_ratio"] < 1.5
        checked += 1
    assert checked == 2


def test_interface_vs_mqtt_arithmetic():
    delta = {"tx_bytes": 10_000, "rx_bytes": 5_000, "tx_packets": 10, "rx_packets": 5}
    final = {"bytes": {"sent_total": 9_000, "received_total": 4_500,
                       "sent": {"messages": 3}, "received": {"messages": 2}}}
    got = interface_vs_mqtt(delta, final)
    assert got["tx"] == {"overhead_bytes": 1_000, "overhead_ratio": 10_000 / 9_000,
                         "residual_bytes": 1_000 - 660}
    assert got["rx"]["residual_bytes"] == 500 - 330
    assert interface_vs_mqtt(None, final)["mqtt"]["sent_messages"] == 3


def test_not_root_is_one_line(capsys):
    from edge.cli import main

    # Files an unprivileged user can read: refused for want of root, not for a file.
    folder = Path(tempfile.mkdtemp(prefix="parse-edge-nonroot-"))
    try:
        folder.chmod(0o755)
        field_file = write_files(folder, "ft-nonroot", unique_field_name())
        for path in folder.iterdir():
            path.chmod(0o644)
        # Once as root, so every module the command imports is loaded (the venv may not be
        # readable by that user): a missing file, one line, exit 2.
        assert main(["trial", str(folder / "missing.yaml")]) == 2
        assert main(["trial", str(field_file), "--out", str(folder / "out"), "--broker",
                     "mqtt://127.0.0.1:1"]) == 2
        capsys.readouterr()
        os.seteuid(65534)
        try:
            code = main(["trial", str(field_file), "--out", str(folder / "out")])
        finally:
            os.seteuid(0)
    finally:
        shutil.rmtree(folder)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: trial on a field needs root"), err


def small_field(root: Path, name: str) -> Path:
    """Two boards in one site; a1 reboots at round 3. 80 rounds of ~0.2 s: a0 is still
    training when a1 is back (~5 s: a fresh interpreter imports torch), and the trial is
    interrupted long before its end."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fleet.yaml").write_text(
        f"fleet: ft-{name}\ndata:\n  dataset: synthetic-pid\n  synthetic: {{modalities: [a, b], "
        "n_samples: 3000, dim: 8}\nagents: {count: 2, multimodal_fraction: 1.0}\n"
        "topology: {kind: ring}\ntraining: {rounds: 80, local_epochs: 2, batch_size: 32}\n"
        "comm: {deadline_s: 5}\nbroker: {url: 'mqtt://127.0.0.1:1883'}\n")
    doc = {"field": name, "fleet": "fleet.yaml", "subnet": free_subnet(),
           "prefixes": str(root / "prefixes"),
           "sites": {"lab": {"boards": ["a0", {"id": "a1", "reboots": [REBOOT_ROUND]}]}}}
    path = root / "field.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _rows_of(metrics: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.endswith("}")]
    except (OSError, ValueError):
        return []


def _interrupt_when(field_file: Path, out: Path, ready: Callable[[], bool]
                    ) -> subprocess.CompletedProcess[str]:
    """Run the trial CLI, SIGTERM it once `ready()`; its outcome."""
    proc = subprocess.Popen([sys.executable, "-m", "edge", "trial", str(field_file), "--out",
                             str(out), "--plain", "--no-plots"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_interrupted_trial_removes_the_field_it_brought_up_and_spares_one_it_found(tmp_path):
    from devices.field.lifecycle import field_down, field_up

    name = unique_field_name()
    field_file = small_field(tmp_path / "a", name)
    spec = load_field(field_file)
    plan = plan_field(spec)
    metrics = plan.board("a1").prefix / "state" / "agents" / "a1" / "metrics.jsonl"
    try:
        # A field the trial brought up: a1 "reboots" at round 3 (its agent killed, restarted by
        # its supervisor, resumed from its checkpoint); the trial is interrupted (SIGTERM) once
        # the restarted agent trained a round, and everything goes.
        done = _interrupt_when(field_file, tmp_path / "out1",
                               lambda: any(r["restarts"] >= 1 for r in _rows_of(metrics)))
        assert done.returncode == 130, done.stderr[-2000:]
        summary = json.loads((tmp_path / "out1" / "summary.json").read_text())
        assert summary["trial"]["status"] == "interrupted"
        (reboot,) = summary["trial"]["field"]["faults"]
        assert reboot["kind"] == "reboot" and reboot["status"] == "injected", reboot
        rows = [json.loads(ln) for ln in
                (tmp_path / "out1" / "agents" / "a1" / "metrics.jsonl").read_text().splitlines()]
        before = [r["round"] for r in rows if r["restarts"] == 0]
        after = [r["round"] for r in rows if r["restarts"] >= 1]
        assert max(before) == REBOOT_ROUND - 1 and after and min(after) > REBOOT_ROUND - 1, rows
        board_state = json.loads((plan.board("a1").prefix / "run" / "state.json").read_text())
        assert board_state["restarts"] == 1
        log = (tmp_path / "out1" / "agents" / "a1" / "agent.log").read_text()
        assert "child exited with status -9; restarting" in log  # the supervisor's own line
        assert leftovers(plan, []) == [] and _field_pids(name) == []
        # A field that was up before: the trial stops its agents and leaves the field up.
        up = field_up(spec)
        sshd_pids = sorted(p.pid for p in up.state.processes)
        metrics.unlink()
        done = _interrupt_when(field_file, tmp_path / "out2", lambda: bool(_rows_of(metrics)))
        assert done.returncode == 130, done.stderr[-2000:]
        assert "already up (reused)" in done.stderr
        again = field_up(spec)
        assert again.already_up and sorted(p.pid for p in again.state.processes) == sshd_pids
        for board in ("a0", "a1"):
            state = json.loads((plan.board(board).prefix / "run" / "state.json").read_text())
            assert state["child_pid"] is None or not Path(f"/proc/{state['child_pid']}").exists()
    finally:
        field_down(spec)
    assert leftovers(plan, []) == []


def test_field_faults_in_round_order_and_reboots_validated(tmp_path):
    from devices.field.spec import FieldSpecError, parse_field
    from edge.trial.field import field_faults

    doc = {"field": "tfaults", "sites": {
        "n": {"boards": [{"id": "a0", "reboots": [5]},
                         {"id": "a1", "link": {"outages": [{"round": 2, "up_round": 4}]}}],
              "backhaul": {"outages": [{"round": 1, "up_round": 2}]}}}}
    plan = plan_field(parse_field(doc, "f.yaml", tmp_path))
    got = [(f.kind, f.target, f.round, f.up_round) for f in field_faults(plan)]
    assert got == [("backhaul-down", "n", 1, 2), ("link-down", "a1", 2, 4), ("reboot", "a0", 5, None)]
    doc["sites"]["n"]["boards"][0]["reboots"] = [5, 5]
    with pytest.raises(FieldSpecError, match="reboots"):
        parse_field(doc, "f.yaml", tmp_path)


def test_missed_mix_rounds_counts_both_directions():
    from edge.trial.field_record import missed_mix_rounds

    expected = {("a0", 1): {"enc/a": ("a1", "a2")}, ("a1", 1): {"enc/a": ("a0",)},
                ("a2", 1): {"enc/a": ("a0",)}, ("a0", 2): {"enc/a": ("a1", "a2")},
                ("a1", 2): {"enc/a": ("a0",)}, ("a2", 2): {"enc/a": ("a0",)}}

    def row(agent: str, round_idx: int, mixed: list[str]) -> dict[str, Any]:
        return {"agent": agent, "round": round_idx, "mixed_from": {"enc/a": mixed}}

    rows = [row("a0", 1, ["a1", "a2"]), row("a1", 1, ["a0"]), row("a2", 1, []),  # a2 missed a0
            row("a0", 2, ["a2"]), row("a1", 2, ["a0"]), row("a2", 2, ["a0"])]     # a0 missed a1
    assert missed_mix_rounds("a0", rows, expected) == [1, 2]   # sent (round 1), received (2)
    assert missed_mix_rounds("a1", rows, expected) == [2]
    assert missed_mix_rounds("a2", rows, expected) == [1]
    assert missed_mix_rounds("a1", rows[:3], expected) == [2]  # no row for a round: missed


def test_a_field_up_from_another_description_is_one_line(tmp_path, capsys):
    from devices.field.lifecycle import field_down, field_up
    from edge.cli import main

    name = unique_field_name()
    first = small_field(tmp_path / "first", name)
    spec = load_field(first)
    try:
        field_up(spec)
        other = small_field(tmp_path / "other", name)  # same field name, another subnet
        capsys.readouterr()
        assert main(["trial", str(other), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and "is up from another description" in err[-1], err
        assert field_up(spec).already_up  # the field that was up is untouched
    finally:
        field_down(spec)
    assert leftovers(plan_field(spec), []) == []
