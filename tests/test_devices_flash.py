"""Flash end to end against a real sshd on 127.0.0.1 (throw-away keys, temporary prefixes).

Release venvs get torch & co. without a 1 GB install each: train bundles are built without a
wheelhouse, so the board's venv is made `--system-site-packages` from a board interpreter whose
system site-packages carry this environment's packages (tests/deploy_support.board_python), as on
a Jetson. The infer bundle carries a real offline wheelhouse (numpy, onnxruntime, pyyaml,
paho-mqtt and their dependencies, `pip download`ed from the machine's local sources) and installs
with `--no-index` into a venv that cannot see torch.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from broker import topics
from broker.client import MqttClient
from devices.board import supervisor
from devices.bundle import BundleSpec, Role, TargetPlatform, write_bundle
from devices.flash import Board, BoardSession, FlashError, board_status, flash, rollback
from devices.fleet import flash_fleet, outcome_table
from devices.inventory import parse_inventory
from devices.ssh import SshError, SshFailure, SshSession, SshTarget
from tests.conftest import free_port
from tests.deploy_support import Sshd, board_python, local_wheelhouse, project_wheel
from tests.exporters_toy import torch_logits, toy_bundle

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
HEALTH_S = 3.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One sshd, one board interpreter and the project wheel for the whole module."""
    root = tmp_path_factory.mktemp("deploy")
    sshd = Sshd(root / "sshd")
    try:
        yield {"root": root, "sshd": sshd, "python": str(board_python(root / "boardpy")),
               "wheel": project_wheel(root / "wheel")}
    finally:
        sshd.stop()


@pytest.fixture
def prefixes(tmp_path: Path) -> Iterator[list[Path]]:
    """Prefixes handed out by a test; every agent started in them is stopped afterwards."""
    made: list[Path] = []
    yield made
    for prefix in made:
        supervisor.stop(prefix / "run")


def train_config(fleet: str, broker_url: str, rounds: int = 100000) -> str:
    """Two synthetic agents on a ring: a0 runs (waiting for a1 each round) until stopped."""
    return (f"fleet: {fleet}\ndata:\n  dataset: synthetic-pid\n  synthetic: {{modalities: [a, b], "
            f"n_samples: 400, dim: 8}}\nagents: {{count: 2}}\ntopology: {{kind: ring}}\n"
            f"training: {{rounds: {rounds}, local_epochs: 1, batch_size: 32}}\n"
            f"comm: {{deadline_s: 1}}\nbroker: {{url: '{broker_url}'}}\n")


def make_bundle(env: dict, out: Path, fleet: str, broker_url: str, *, agent: str = "a0",
                rounds: int = 100000, arch: str | None = None, **kwargs: object) -> Path:
    spec = BundleSpec(agent=agent, role=Role.TRAIN, version="0.1.0", fleet=fleet,
                      config_text=train_config(fleet, broker_url, rounds), wheel=env["wheel"],
                      target=TargetPlatform(arch or platform.machine(), PY))
    spec = replace(spec, **kwargs)  # type: ignore[arg-type]
    return write_bundle(spec, out).path


def board(env: dict, prefixes: list[Path], name: str = "a0", **kwargs: object) -> Board:
    prefix = env["root"] / f"prefix-{name}-{len(prefixes)}-{time.monotonic_ns()}"
    prefixes.append(prefix)
    return Board(name, env["sshd"].target, str(prefix), env["python"], **kwargs)  # type: ignore[arg-type]


def current(b: Board) -> str | None:
    link = Path(b.prefix) / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def agent_pid(b: Board) -> int:
    state = supervisor.read_state(Path(b.prefix) / "run")
    assert state["running"], state
    return int(state["supervisor_pid"])


def retained_status(url: str, topic: str, timeout_s: float = 30) -> dict:
    """Wait for a retained JSON status with online: true on `topic` (an agent's comes in an envelope)."""
    from broker.envelope import MAGIC, open_envelope

    got: dict = {}
    event = threading.Event()

    def on_message(t: str, payload: bytes) -> None:
        doc = json.loads(open_envelope(payload, None).body if payload.startswith(MAGIC) else payload)
        if doc.get("online"):
            got.update(doc)
            event.set()

    with MqttClient(url, f"probe-{time.monotonic_ns()}", on_message=on_message) as client:
        client.subscribe(topic)
        assert event.wait(timeout_s), f"no online status on {topic}"
    return got


def test_install_start_reflash_new_version_and_rollback(env, prefixes, fleet_name, mosquitto_url,
                                                         tmp_path):
    b = board(env, prefixes)
    v1 = make_bundle(env, tmp_path / "v1.tar.gz", fleet_name, mosquitto_url)
    lines: list[str] = []
    first = flash(v1, b, env["sshd"].options(), health_s=HEALTH_S, log=lines.append)
    assert first.action == "installed" and current(b) == first.release
    steps = [ln.split(": ")[1] for ln in lines]
    for step in ("connect", "copy", "checksum", "platform", "extract", "verify", "venv", "start",
                 "switch"):
        assert step in steps, (step, lines)
    status = retained_status(mosquitto_url, topics.status_topic(fleet_name, "a0"))
    assert status["agent"] == "a0"
    pid = agent_pid(b)

    again = flash(v1, b, env["sshd"].options(), health_s=HEALTH_S, log=lines.append)
    assert again.action == "no-op" and agent_pid(b) == pid

    v2 = make_bundle(env, tmp_path / "v2.tar.gz", fleet_name, mosquitto_url, rounds=99999)
    second = flash(v2, b, env["sshd"].options(), health_s=HEALTH_S, log=lines.append)
    assert second.release != first.release and current(b) == second.release
    assert agent_pid(b) != pid
    previous = Path(b.prefix) / "previous"
    assert os.readlink(previous).endswith(first.release)

    back = rollback(b, env["sshd"].options(), health_s=HEALTH_S, log=lines.append)
    assert back.release == first.release == current(b)
    state = board_status(b, env["sshd"].options())
    assert state["running"] and state["current"] == first.release
    assert supervisor.read_state(Path(b.prefix) / "run")["release"] == first.release


def _rewrite(bundle: Path, out: Path, change: dict[str, bytes]) -> Path:
    """A copy of `bundle` with some members' bytes replaced (no MANIFEST update)."""
    with tarfile.open(bundle, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            data = change.get(m.name, data)
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return out


def test_corrupted_edited_and_foreign_bundles_leave_the_old_release_running(
        env, prefixes, fleet_name, mosquitto_url, tmp_path):
    b = board(env, prefixes)
    good = make_bundle(env, tmp_path / "good.tar.gz", fleet_name, mosquitto_url)
    ok = flash(good, b, env["sshd"].options(), health_s=HEALTH_S, log=lambda _: None)
    pid = agent_pid(b)
    with tarfile.open(good, "r:gz") as tar:
        manifest = tar.extractfile("MANIFEST").read()  # type: ignore[union-attr]
    cases = {
        "changed file": (_rewrite(good, tmp_path / "c1.tar.gz",
                                  {"config/fleet.yaml": b"fleet: evil\n"}),
                         "config/fleet.yaml: sha256 does not match MANIFEST"),
        "edited MANIFEST": (_rewrite(good, tmp_path / "c2.tar.gz",
                                     {"MANIFEST": manifest.replace(b"config", b"cfg", 1)}),
                            "MANIFEST: expected the sha256 recorded in bundle.json"),
        "other arch": (make_bundle(env, tmp_path / "arm.tar.gz", fleet_name, mosquitto_url,
                                   arch="aarch64"),
                       f"bundle targets aarch64/Python {PY}, board has {platform.machine()}"),
        "other python": (make_bundle(env, tmp_path / "py.tar.gz", fleet_name, mosquitto_url,
                                     target=TargetPlatform(platform.machine(), "3.99")),
                         "board has"),
    }
    for what, (bundle, expected) in cases.items():
        with pytest.raises(FlashError) as err:
            flash(bundle, b, env["sshd"].options(), health_s=HEALTH_S, log=lambda _: None)
        message = str(err.value)
        assert "\n" not in message and message.startswith("a0 (root@127.0.0.1:"), what
        assert expected in message, (what, message)
        assert current(b) == ok.release and agent_pid(b) == pid, what
    releases = sorted(p.name for p in (Path(b.prefix) / "releases").iterdir())
    assert releases == [ok.release]  # nothing half-installed left behind

    # A release that installs but whose agent exits at start (a config it rejects): the new
    # release is stopped, the old one restarted, `current` never moves. The health window is
    # long, but a crash ends it early.
    broken = make_bundle(env, tmp_path / "broken.tar.gz", fleet_name, mosquitto_url,
                         config_text="fleet: x\ndata: {dataset: synthetic-pid}\nagents: "
                                     "{count: 2}\ntraining: {rounds: 0}\nbroker: "
                                     f"{{url: '{mosquitto_url}'}}\n")
    with pytest.raises(FlashError, match=r"did not stay up .* status 2; log: error: .*"
                                         r"training.rounds: expected an integer from 1 to"):
        flash(broken, b, env["sshd"].options(), health_s=60, log=lambda _: None)
    assert current(b) == ok.release
    assert supervisor.read_state(Path(b.prefix) / "run")["release"] == ok.release
    assert supervisor.read_state(Path(b.prefix) / "run")["running"]


def test_checksum_mismatch_after_copy_is_refused(env, prefixes, fleet_name, mosquitto_url,
                                                 tmp_path):
    b = board(env, prefixes)
    bundle = make_bundle(env, tmp_path / "b.tar.gz", fleet_name, mosquitto_url)
    with BoardSession(b, env["sshd"].options(), lambda _: None) as session:
        remote = f"{b.prefix}/incoming/b.tar.gz"
        session.copy(bundle, remote)
        with pytest.raises(FlashError, match=r"sha256 after copy is \w+, expected 000000000000"):
            session.action("install", "--bundle", remote, "--sha256", "0" * 64)
    assert not (Path(b.prefix) / "releases").exists() or not any(
        (Path(b.prefix) / "releases").iterdir())


def test_full_disk_is_refused_before_anything_is_installed(env, prefixes, fleet_name,
                                                           mosquitto_url, tmp_path):
    b = board(env, prefixes)
    Path(b.prefix).mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", b.prefix], check=True)
    try:
        bundle = make_bundle(env, tmp_path / "b.tar.gz", fleet_name, mosquitto_url)
        with pytest.raises(FlashError, match=r"MB free, expected at least \d+ MB \(full disk\)"):
            flash(bundle, b, env["sshd"].options(), health_s=HEALTH_S, log=lambda _: None)
        assert not (Path(b.prefix) / "current").exists()
        assert not (Path(b.prefix) / "incoming").exists()
    finally:
        subprocess.run(["umount", b.prefix], check=True)


def test_ssh_failures_are_one_line_each(env, tmp_path):
    sshd: Sshd = env["sshd"]
    wrong_known = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
                   check=True)
    other = (tmp_path / "other.pub").read_text().split()
    wrong_known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    cases = [
        (sshd.target, sshd.options(known_hosts=wrong_known), SshFailure.HOST_KEY),
        (sshd.target, sshd.options(identity=tmp_path / "other"), SshFailure.KEY_REFUSED),
        (SshTarget("127.0.0.1", "root", free_port()), sshd.options(), SshFailure.UNREACHABLE),
    ]
    for target, options, kind in cases:
        with SshSession(target, options) as session, pytest.raises(SshError) as err:
            session.run(["true"])
        assert err.value.kind is kind and "\n" not in str(err.value), str(err.value)


def test_inventory_of_three_boards_flashes_in_parallel_one_failure_spares_the_others(
        env, prefixes, fleet_name, mosquitto_url, tmp_path):
    sshd: Sshd = env["sshd"]
    bundles = {a: make_bundle(env, tmp_path / f"{a}.tar.gz", fleet_name, mosquitto_url, agent=a,
                              rounds=3)
               for a in ("a0", "a1")}
    bundles["a2"] = make_bundle(env, tmp_path / "a2.tar.gz", fleet_name, mosquitto_url,
                                agent="a2", arch="aarch64")
    dirs = {a: env["root"] / f"inv-{a}-{time.monotonic_ns()}" for a in bundles}
    prefixes.extend(dirs.values())
    inventory = parse_inventory({
        "defaults": {"user": "root", "port": sshd.port, "python": env["python"]},
        "boards": {a: {"host": "127.0.0.1", "prefix": str(d)} for a, d in dirs.items()},
    }, "boards.yaml")
    started = time.perf_counter()
    outcomes = flash_fleet(inventory, bundles, sshd.options(), workers=3, health_s=HEALTH_S,
                           log=lambda _: None)
    wall_s = time.perf_counter() - started
    by_agent = {o.agent: o for o in outcomes}
    assert [o.agent for o in outcomes] == ["a0", "a1", "a2"]
    assert by_agent["a0"].ok and by_agent["a1"].ok and not by_agent["a2"].ok
    assert "bundle targets aarch64" in by_agent["a2"].result
    for a in ("a0", "a1"):
        assert (dirs[a] / "current").is_symlink()
    assert not (dirs["a2"] / "current").exists()
    table = outcome_table(outcomes)
    assert table.splitlines()[0].split() == ["agent", "host", "release", "result", "seconds"]
    assert len(table.splitlines()) == 4
    # Parallel: the boards overlapped (each flash includes a health window of sleeping).
    assert wall_s < 0.85 * sum(o.seconds for o in outcomes)


@pytest.fixture(scope="module")
def infer_wheelhouse(env: dict) -> Path:
    return local_wheelhouse(env["root"] / "wheelhouse",
                            ["numpy>=1.24", "onnxruntime>=1.18", "pyyaml>=6", "paho-mqtt>=2,<3",
                             "msgspec>=0.18"])


def test_infer_bundle_serves_predictions_without_torch(env, prefixes, fleet_name, mosquitto_url,
                                                       tmp_path, infer_wheelhouse):
    toy = toy_bundle("mlp", ("accel", "gyro"))
    spec = BundleSpec(agent="watch", role=Role.INFER, version="0.1.0", fleet=fleet_name,
                      config_text=f"fleet: {fleet_name}\nbroker: {{url: '{mosquitto_url}'}}\n",
                      wheel=env["wheel"], target=TargetPlatform(platform.machine(), PY),
                      export_dir=toy.dir, wheelhouse=infer_wheelhouse)
    bundle = write_bundle(spec, tmp_path / "infer.tar.gz").path
    b = board(env, prefixes, "watch")
    result = flash(bundle, b, env["sshd"].options(), health_s=HEALTH_S, log=lambda _: None)
    release = Path(b.prefix) / "releases" / result.release
    venv_python = str(release / "venv" / "bin" / "python")
    probe = subprocess.run([venv_python, "-c", "import importlib.util as u; "
                            "print(u.find_spec('torch') is None, u.find_spec('onnxruntime') "
                            "is not None)"], capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["True", "True"]

    status = retained_status(mosquitto_url, topics.infer_topic(fleet_name, "watch", "status"))
    assert status["role"] == "infer" and status["providers"][-1] == "CPUExecutionProvider"
    replies: list[dict] = []
    got = threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        replies.append(json.loads(payload))
        got.set()

    buf = io.BytesIO()
    np.savez(buf, **{m: toy.raw[m][:3] for m in ("accel", "gyro")})
    with MqttClient(mosquitto_url, f"req-{time.monotonic_ns()}", on_message=on_message) as client:
        client.subscribe(topics.infer_topic(fleet_name, "watch", "prediction"))
        client.wait_subscribed()
        client.publish(topics.infer_topic(fleet_name, "watch", "request"), buf.getvalue())
        assert got.wait(20)
    assert replies[0]["graph"] == "fused-accel+gyro" and len(replies[0]["predictions"]) == 3
    # The answers are the torch model's, computed on the board without torch.
    expected = np.argmax(torch_logits(toy.agent, {m: x[:3] for m, x in toy.xs.items()}), axis=-1)
    labels = [p["label"] for p in replies[0]["predictions"]]
    assert labels == [toy.manifest.labels[i] for i in expected[:3]]
    state = board_status(b, env["sshd"].options())
    assert state["role"] == "infer" and state["last_metrics"]["requests"] == 1



def test_cli_from_config_to_running_boards_and_status(env, prefixes, fleet_name, mosquitto_url,
                                                      tmp_path, capsys):
    from edge.cli import main

    sshd: Sshd = env["sshd"]
    config = tmp_path / "fleet.yaml"
    config.write_text(train_config(fleet_name, mosquitto_url, rounds=100000))
    out = tmp_path / "bundles"
    assert main(["bundle", str(config), "--all-agents", "--out", str(out), "--wheel",
                 str(env["wheel"])]) == 0
    dirs = {a: env["root"] / f"cli-{a}-{time.monotonic_ns()}" for a in ("a0", "a1")}
    prefixes.extend(dirs.values())
    inventory = tmp_path / "boards.yaml"
    inventory.write_text(
        f"defaults: {{user: root, port: {sshd.port}, identity: {sshd.client_key}, "
        f"known_hosts: {sshd.known_hosts}, python: {env['python']}}}\nboards:\n"
        + "".join(f"  {a}: {{host: 127.0.0.1, prefix: {d}}}\n" for a, d in dirs.items()))
    common = ["--inventory", str(inventory), "--ssh-config", "/dev/null"]
    capsys.readouterr()
    assert main(["flash", str(out), *common, "--health-s", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = [ln.split() for ln in printed if ln.startswith(("a0 ", "a1 "))]
    assert [r[0] for r in rows] == ["a0", "a1"] and all(r[3] == "installed" for r in rows)
    for a in ("a0", "a1"):
        retained_status(mosquitto_url, topics.status_topic(fleet_name, a))
    time.sleep(1.5)  # a round or two: the agents write metrics lines
    assert main(["status", *common]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["agent", "host", "current"]
    assert all("running (pid" in line for line in table[1:]) and len(table) == 3
    # One board, by --host, as JSON.
    host = ["--host", f"root@127.0.0.1:{sshd.port}", "--identity", str(sshd.client_key),
            "--known-hosts", str(sshd.known_hosts), "--ssh-config", "/dev/null",
            "--prefix", str(dirs["a0"]), "--python", env["python"]]
    assert main(["status", *host, "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["agent"] == "a0" and doc["running"] and doc["current"] == rows[0][2]
