"""The secure set-up end to end: a trial against the Mosquitto parse-edge configures, under attack.

Mosquitto runs the generated configuration (hashed per-agent passwords, an ACL keyed on the
agent id, TLS with client certificates from `broker certs`, a small max_packet_size); agents log in
with their own secrets over `mqtts://localhost` (host name checked) and sign everything for the
trial's run. An attacker holding a3's broker login (not the fleet key) injects the cases of
issue 13; each is rejected and counted, and the fleet mixes exactly what an unattacked run mixes.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from broker import topics, wire
from broker.client import MqttClient, TlsFiles
from broker.codecs import CodecId
from broker.credentials import make_credentials, write_credentials
from broker.embedded import free_port
from broker.envelope import Kind, Signer, open_envelope
from broker.exchange import parse_run_announcement
from broker.keys import KeyRing
from broker.mosquitto import MosquittoProcess, MosquittoSettings, write_mosquitto_config
from edge.config.load import load_config
from edge.errors import ConfigError, UserError
from edge.trial.runner import TrialOptions, TrialResult, run_trial
from tests.broker_support import wait_for
from tests.test_edge_trial import write_config

AGENTS = ["a0", "a1", "a2", "a3"]
ROUNDS = 3
PACKET_BYTES = 2048  # below one encoder update (about 2.8 kB): every update goes in chunks


@dataclass
class SecureBroker:
    """Mosquitto with the generated secure configuration, and the files a fleet config names."""

    fleet: str
    folder: Path
    url: str
    process: MosquittoProcess

    def client(self, user: str, client_id: str) -> MqttClient:
        """A client logged in as `user` (its secret and client certificate), MQTT 5."""
        secret = (self.folder / "creds" / ("operator.secret" if user == "operator"
                                           else f"agents/{user}.secret")).read_text().strip()
        pki = self.folder / "pki"
        tls = TlsFiles(str(pki / "ca.pem"), str(pki / "clients" / f"{user}.pem"),
                       str(pki / "clients" / f"{user}.key"))
        return MqttClient(self.url, client_id, username=user, password=secret, tls=tls, protocol=5)

    def config(self, folder: Path, rounds: int = ROUNDS) -> Path:
        """The small test fleet, naming the credential and certificate folders (never secrets)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = write_config(folder, self.fleet, rounds=rounds)
        doc = yaml.safe_load(path.read_text())
        doc["broker"] = {"url": self.url, "credentials": str(self.folder / "creds"),
                         "certs": str(self.folder / "pki")}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


def start_mosquitto(folder: Path, fleet: str, deny_write: str | None = None) -> MosquittoProcess:
    """Write credentials, PKI and config (as `broker credentials|certs|mosquitto-conf` do); start it.

    `deny_write` removes one ACL line (an ACL that denies an agent its own updates).
    """
    from broker.certs import write_pki

    if not (folder / "creds").exists():
        write_credentials(make_credentials(fleet, AGENTS), folder / "creds")
        write_pki(folder / "pki", AGENTS, hostnames=["localhost"])
    pki = folder / "pki"
    port = free_port()
    settings = MosquittoSettings(
        fleet=fleet, agent_ids=AGENTS, port=port, bind_address="127.0.0.1", persistence=False,
        password_file=folder / "creds" / "passwd",
        tls=TlsFiles(str(pki / "ca.pem"), str(pki / "server.pem"), str(pki / "server.key")),
        require_client_certificate=True, max_packet_bytes=PACKET_BYTES)
    conf = write_mosquitto_config(settings, folder / f"mosquitto-{port}")
    if deny_write is not None:
        acl = conf.acl.read_text()
        assert deny_write in acl
        conf.acl.write_text(acl.replace(deny_write + "\n", ""))
    return MosquittoProcess(conf.conf, port, tls=True).start()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    folder = tmp_path_factory.mktemp("secure")
    fleet = f"sec{int(time.time() * 1000) % 10**9}"
    process = start_mosquitto(folder, fleet)
    try:
        yield SecureBroker(fleet, folder, f"mqtts://localhost:{process.port}", process)
    finally:
        process.stop()


def trial(broker: SecureBroker, folder: Path, **opts: object) -> TrialResult:
    config = broker.config(folder)
    return run_trial(load_config(config), TrialOptions(out=folder / "trial", config_path=str(config),
                                                       plots=False, **opts))  # type: ignore[arg-type]


def rejected(out: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for agent in AGENTS:
        total.update(json.loads((out / "agents" / agent / "final.json").read_text())["rejected"])
    return total


class Recorder:
    """An operator client (it may read the whole fleet) keeping every message on a filter."""

    def __init__(self, broker: SecureBroker, name: str, *topic_filters: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = broker.client("operator", f"{broker.fleet}-{name}")
        self.client._on_message = lambda topic, payload: self.messages.append((topic, payload))
        for topic_filter in topic_filters:
            self.client.subscribe(topic_filter)
        self.client.start()
        assert self.client.wait_subscribed(10.0)

    def stop(self) -> None:
        self.client.stop(publish_will=False)


def test_secure_trial_rejects_every_attack_and_mixes_as_much_as_an_unattacked_run(
        secure: SecureBroker, tmp_path: Path) -> None:
    fleet = secure.fleet
    # An unattacked run, recorded by an eavesdropper with the operator's read access.
    recorder = Recorder(secure, "capture", topics.updates_filter(fleet, "a3"))
    baseline = trial(secure, tmp_path / "baseline")
    recorder.stop()
    assert (baseline.status, baseline.exit_code) == ("completed", 0), baseline.summary["trial"]["reason"]
    clean = baseline.summary["trial"]["mix_coverage"]
    assert clean["expected"] > 0 and clean["overall"] == 1.0
    captured = recorder.messages
    assert captured, "the eavesdropper captured none of a3's updates"
    # Chunks fit the broker's 2048-byte packets: more messages than updates, none too long.
    final = json.loads((baseline.out / "agents" / "a3" / "final.json").read_text())
    enc = final["bytes"]["per_branch"]["enc/a"]
    assert enc["sent_messages"] >= 2 * (ROUNDS - 1)  # the last round publishes nothing
    # MQTT 5 PUBLISH: 5 bytes of fixed header and length, the topic with its length, a packet id
    # and an empty property list around the payload.
    assert max(len(p) + len(t) + 10 for t, p in captured) <= PACKET_BYTES
    assert max(len(p) for _, p in captured) > PACKET_BYTES * 0.9  # sized to the limit
    assert "update chunks of at most" in (baseline.out / "agents" / "a0" / "agent.log").read_text()

    # The attacker holds a3's broker login and certificate, not the fleet key.
    runs: list[bytes] = []
    online: set[str] = set()

    def overhear(topic: str, payload: bytes) -> None:
        # a3 may read the control topic (the run announcement) and every status.
        if topic == topics.control_topic(fleet) and payload:
            runs.append(payload)
        elif runs and topic.endswith("/status") and payload.startswith(b"PESG"):
            envelope = open_envelope(payload, None)  # read, not verified: no fleet key here
            if envelope.run_id == open_envelope(runs[-1], None).run_id and \
                    json.loads(envelope.body)["online"]:
                online.add(envelope.sender)

    attacker = secure.client("a3", f"{fleet}-mallory")
    attacker._on_message = overhear
    attacker.subscribe(topics.control_topic(fleet))
    attacker.subscribe(topics.status_filter(fleet))
    attacker.start()
    assert attacker.wait_subscribed(10.0)
    for topic, payload in captured:  # signed updates of the earlier run, now retained
        attacker.publish(topic, payload, retain=True)
    status_a3 = topics.status_topic(fleet, "a3")
    attacker.publish(status_a3, json.dumps({"agent": "a3", "online": False}).encode(), retain=True)
    assert attacker.flush(10.0) and not attacker.refusals
    assert not runs, "the finished run is still announced (retained) on the control topic"
    witness = Recorder(secure, "a4-side", f"parse/{fleet}/agents/a2/#",
                       topics.updates_filter(fleet, "a2"), topics.metrics_topic(fleet, "a2"))

    attacked_out = tmp_path / "attacked"
    done = threading.Event()

    def attack() -> None:
        # Once the run is announced and every agent has announced itself (each is connected,
        # subscribed and past its probe; none can have finished its rounds), inject live cases.
        if not wait_for(lambda: online >= set(AGENTS) or done.is_set(), 60.0) or done.is_set():
            return
        announced = parse_run_announcement(open_envelope(runs[-1], None).body)
        assert announced is not None
        run_id = announced.run_id
        for topic, payload in captured:       # the earlier run's updates, live: other_run
            attacker.publish(topic, payload)
        forged_key = KeyRing(fleet, b"guessed-fleet-key-0123456789abcd")
        forged = Signer(fleet, "a3", forged_key, run_id, epoch=7)
        offline = json.dumps({"agent": "a3", "online": False}).encode()
        attacker.publish(status_a3, forged.seal(Kind.STATUS, offline), retain=True)  # bad_hmac
        attacker.publish(status_a3, offline, retain=True)                           # not signed
        update_topic = topics.update_topic(fleet, "a3", "enc/a")
        payload = bytes(64)
        header = wire.Header(fleet, "a3", 4_000_000_000, "enc/a", "sig", CodecId.FP32, -1, 16,
                             len(payload), 0, 1, 0, len(payload), b"", run_id, 0)
        header = header._replace(sha256=wire.update_digest(header, payload))
        attacker.publish(update_topic, wire.encode_message(header, payload))        # unsigned
        # An insider with the fleet key still cannot push a round far ahead: out_of_window.
        a3_key = KeyRing(fleet, bytes.fromhex((secure.folder / "creds" / "fleet.key").read_text()))
        attacker.publish(update_topic, wire.encode_message(header, payload, a3_key.key_for("a3")))
        # a3's credentials cannot write another agent's topics (a2 stands for "a4" of the issue:
        # this fleet has four agents, a0-a3).
        attacker.publish(topics.status_topic(fleet, "a2"), b"mallory", retain=True)
        attacker.publish(topics.metrics_topic(fleet, "a2"), b"mallory")
        attacker.publish(topics.update_topic(fleet, "a2", "enc/a"), b"mallory")
        attacker.flush(10.0)

    injector = threading.Thread(target=attack, daemon=True)
    injector.start()
    attacked = trial(secure, attacked_out)
    done.set()
    injector.join(30.0)
    witness.stop()
    attacker.stop(publish_will=False)

    assert (attacked.status, attacked.exit_code) == ("completed", 0), attacked.summary["trial"]["reason"]
    coverage = attacked.summary["trial"]["mix_coverage"]
    assert (coverage["mixed"], coverage["expected"]) == (clean["mixed"], clean["expected"])
    counts = rejected(attacked_out / "trial")
    # retained: the replayed updates the broker kept and handed to subscribing agents;
    # other_run: the same updates live; bad_hmac: the status signed with a guessed key;
    # bad_magic: the plain-JSON status (no envelope, so no signature); unsigned and
    # out_of_window: the round 4,000,000,000 update without and with a valid HMAC.
    for reason in ("retained", "other_run", "bad_hmac", "bad_magic", "unsigned", "out_of_window"):
        assert counts[reason] > 0, f"{reason} not counted: {dict(counts)}"
    report = (attacked_out / "trial" / "report.md").read_text()
    assert "out_of_window" in report and "bad_hmac" in report
    security = attacked.summary["trial"]["security"]
    assert security["signed"] and security["login"] == "operator" and security["tls"]
    assert security["runner_rejected"].get("bad_hmac", 0) > 0  # the runner's view verifies too
    assert "runner logged in as operator; TLS" in report
    # The ACL held: the broker refused a3's publishes on a2's topics and nobody received them.
    refused = {r.topic for r in attacker.refusals}
    assert {topics.status_topic(fleet, "a2"), topics.metrics_topic(fleet, "a2"),
            topics.update_topic(fleet, "a2", "enc/a")} <= refused
    assert not any(payload == b"mallory" for _, payload in witness.messages)
    # ... while a2's own messages on those topics did arrive.
    heard = {topic for topic, _ in witness.messages}
    assert {topics.status_topic(fleet, "a2"), topics.update_topic(fleet, "a2", "enc/a")} <= heard


def test_a_publish_the_acl_denies_stops_the_trial_with_one_line(secure: SecureBroker,
                                                               tmp_path: Path) -> None:
    root = f"parse/{secure.fleet}"
    process = start_mosquitto(secure.folder, secure.fleet,
                              deny_write=f"topic write {root}/updates/a1/#")
    try:
        denied = SecureBroker(secure.fleet, secure.folder, f"mqtts://localhost:{process.port}", process)
        result = trial(denied, tmp_path)
    finally:
        process.stop()
    assert result.status == "failed" and result.exit_code != 0
    reason = result.summary["trial"]["reason"]
    assert "a1 ended before round 0" in reason and "Not authorized" in reason
    line = (result.out / "agents" / "a1" / "agent.log").read_text().strip().splitlines()[-1]
    assert line.startswith("error: a1: broker mqtts://localhost:")
    assert f"publish probe on {root}/updates/a1/$probe" in line and "Not authorized" in line


def test_the_embedded_broker_runs_a_signed_trial(tmp_path: Path, fleet_name: str) -> None:
    # amqtt checks no password and has no ACL, but the fleet key still signs and binds to the run.
    # The same config names certificates too: unused on the embedded broker's plain mqtt://.
    from broker.certs import write_pki

    config = write_config(tmp_path, fleet_name, rounds=2)
    doc = yaml.safe_load(config.read_text())
    write_credentials(make_credentials(fleet_name, AGENTS), tmp_path / "creds")
    write_pki(tmp_path / "pki", AGENTS)
    doc["broker"] = {"url": "embedded", "credentials": "creds", "certs": "pki"}
    config.write_text(yaml.safe_dump(doc))
    result = run_trial(load_config(config), TrialOptions(out=tmp_path / "trial", config_path=str(config),
                                                        plots=False))
    assert (result.status, result.exit_code) == ("completed", 0), result.summary["trial"]["reason"]
    assert result.summary["trial"]["mix_coverage"]["overall"] == 1.0
    security = result.summary["trial"]["security"]
    assert security["signed"] and security["login"] is None and not security["tls"]
    log = (tmp_path / "trial" / "agents" / "a0" / "agent.log").read_text()
    assert f"(MQTT 3.1.1, signed messages, run {security['run_id'][:8]}, epoch 0)" in log
    assert not rejected(tmp_path / "trial")  # nothing of the fleet's own was refused


def test_a_trial_that_mixed_nothing_fails_and_says_why(tmp_path: Path, fleet_name: str) -> None:
    # Every update is lost on the way (as under an ACL that drops them silently): agents run
    # their rounds alone; that is not a completed trial.
    config = write_config(tmp_path, fleet_name, rounds=2, deadline_s=3, faults=[
        {"kind": "loss", "agents": AGENTS, "loss_percent": 100}])
    result = run_trial(load_config(config), TrialOptions(out=tmp_path / "trial", config_path=str(config),
                                                        plots=False))
    assert (result.status, result.exit_code) == ("failed", 1)
    reason = result.summary["trial"]["reason"]
    coverage = result.summary["trial"]["mix_coverage"]
    assert coverage["expected"] > 0 and coverage["mixed"] == 0
    expected = coverage["expected"]
    assert reason.startswith(f"no agent mixed a neighbour's update (mix coverage 0 of {expected})")
    assert "messages NOT signed" in (tmp_path / "trial" / "report.md").read_text()


def test_secrets_are_files_never_yaml_values(secure: SecureBroker, tmp_path: Path) -> None:
    config = secure.config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    for key, instead in (("password", "broker.password_file"), ("hmac_key", "broker.key_file")):
        bad = tmp_path / f"{key}.yaml"
        bad.write_text(yaml.safe_dump({**doc, "broker": {**doc["broker"], key: "s3cret"}}))
        with pytest.raises(ConfigError, match=rf"broker\.{key}: secrets are not kept.*{instead}"):
            load_config(bad)
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({**doc, "broker": {**doc["broker"], "tls": {"ca_file": "ca.pem"}}}))
    with pytest.raises(ConfigError, match=r"broker\.certs: expected either certs"):
        load_config(both)
    # Relative paths resolve against the config file; a world-readable secret is refused.
    loose = tmp_path / "loose.key"
    loose.write_text((secure.folder / "creds" / "fleet.key").read_text())
    loose.chmod(0o644)
    doc["broker"] = {"url": secure.url, "key_file": "loose.key"}
    config.write_text(yaml.safe_dump(doc))
    result_cfg = load_config(config)
    from edge.config.secrets import fleet_keys

    with pytest.raises(UserError, match=r"loose\.key: fleet key: readable by others"):
        fleet_keys(result_cfg)
    loose.chmod(0o600)
    keys = fleet_keys(result_cfg)
    assert keys is not None and keys.signing


def test_standalone_agents_end_in_one_run(tmp_path: Path, fleet_name: str) -> None:
    import subprocess
    import sys

    from broker.embedded import EmbeddedBroker
    from broker.exchange import RunAnnouncement, encode_run_announcement

    config = write_config(tmp_path, fleet_name, rounds=2)
    doc = yaml.safe_load(config.read_text())
    doc["agents"] = {"count": 2, "multimodal_fraction": 1.0}
    write_credentials(make_credentials(fleet_name, ["a0", "a1"]), tmp_path / "creds")
    doc["broker"] = {"credentials": "creds"}  # relative to the config file
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    fleet_key = KeyRing(fleet_name, bytes.fromhex((tmp_path / "creds" / "fleet.key").read_text()))
    with EmbeddedBroker() as broker:
        def agent(agent_id: str) -> subprocess.Popen[str]:
            return subprocess.Popen([sys.executable, "-m", "edge", "agent", str(config), "--agent",
                                     agent_id, "--broker", broker.url, "--out", str(out),
                                     "--energy", "estimated", "--start-timeout", "60"],
                                    stderr=subprocess.PIPE, text=True)

        first = agent("a0")
        assert first.stderr is not None
        lines = []
        for line in first.stderr:  # a0 is alone on the broker: it fixes a run
            lines.append(line)
            if "fixes run" in line or "joins run" in line:
                break
        assert "no run announced on the control topic: fixes run" in lines[-1], lines
        # Meanwhile another board fixed a run of its own (as boards flashed together do): a
        # smaller run id, announced live. a0 has not started round 0: it switches to that run
        # and announces it again, retained, so that a1, starting now, joins it too.
        smaller = bytes(15) + b"\x01"
        with MqttClient(broker.url, f"{fleet_name}-other") as other:
            other.publish(topics.control_topic(fleet_name), Signer(
                fleet_name, "a1", fleet_key, smaller).seal(
                Kind.CONTROL, encode_run_announcement(RunAnnouncement(smaller, "a1"))))
        second = agent("a1")
        err_a1 = second.communicate(timeout=120)[1]
        err_a0 = "".join(lines) + first.communicate(timeout=120)[1]
    assert (first.returncode, second.returncode) == (0, 0), err_a0 + err_a1
    assert "switches to run 00000000 (announced by a1;" in err_a0
    assert "joins run 00000000 (announced by a1)" in err_a1
    for agent_id in ("a0", "a1"):
        final = json.loads((out / "agents" / agent_id / "final.json").read_text())
        assert final["rounds_completed"] == 2
        assert (out / "agents" / agent_id / "epoch").read_text().strip() == "0"
        rows = [json.loads(x) for x in (out / "agents" / agent_id / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["mixed_from"], f"{agent_id} mixed nothing: the two were not in one run"


def test_every_start_of_an_agent_bumps_its_epoch(tmp_path: Path) -> None:
    from edge.net.agent import next_epoch

    assert [next_epoch(tmp_path) for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / "epoch").read_text() == "2\n"
    (tmp_path / "epoch").write_text("-1\n")
    with pytest.raises(UserError, match=r"epoch: epoch: expected a non-negative integer"):
        next_epoch(tmp_path)


def test_a_board_gets_its_own_secret_and_the_fleet_key_as_files_its_config_names(
        secure: SecureBroker, tmp_path: Path) -> None:
    import os
    import sys

    from edge.config.secrets import fleet_keys, mqtt_login
    from edge.deploy import BundleRequest, board_config

    config = secure.config(tmp_path / "operator")
    cfg = load_config(config)
    text, secrets, files = board_config(cfg, BundleRequest(), "a2")
    assert "creds" not in text and "certs" not in yaml.safe_load(text)["broker"]
    assert sorted(secrets) == ["broker_password", "fleet_key", "tls_key"]
    # The release as installed on the board: config/, secrets/ (0600) and data/ side by side.
    release = tmp_path / "release"
    (release / "config").mkdir(parents=True)
    (release / "config" / "fleet.yaml").write_text(text)
    for name, value in secrets.items():
        path = release / "secrets" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(value)
        os.chmod(path, 0o600)
    for carried in files:
        (release / carried.path).parent.mkdir(parents=True, exist_ok=True)
        (release / carried.path).write_bytes(Path(str(carried.source)).read_bytes())
    (release / "bundle.json").write_text(json.dumps({
        "config": "config/fleet.yaml", "secrets": [f"secrets/{n}" for n in secrets]}))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "devices" / "board"))
    try:
        from launch import runtime_config  # the board's launcher, as a script imports it
    finally:
        sys.path.pop(0)
    runtime_path = runtime_config(release)
    runtime = load_config(runtime_path)
    assert mqtt_login(cfg, "a2").password not in runtime_path.read_text()  # it names files only
    login, ours = mqtt_login(runtime, "a2"), mqtt_login(cfg, "a2")
    assert (login.username, login.password) == ("a2", ours.password)
    assert login.tls is not None and login.tls.cert_file and login.tls.key_file
    own_cert = secure.folder / "pki" / "clients" / "a2.pem"
    assert Path(login.tls.cert_file).read_bytes() == own_cert.read_bytes()
    runtime_keys, fleet = fleet_keys(runtime), fleet_keys(cfg)
    assert runtime_keys is not None and fleet is not None
    assert runtime_keys.key_for("a2") == fleet.key_for("a2")


def test_the_broker_host_name_is_checked_against_its_certificate(secure: SecureBroker,
                                                                 tmp_path: Path) -> None:
    import subprocess
    import sys

    config = secure.config(tmp_path)
    # The server certificate names localhost only: 127.0.0.1 is the same broker, not its name.
    wrong_name = secure.url.replace("localhost", "127.0.0.1")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edge", "agent", str(config), "--agent", "a0",
                           "--broker", wrong_name, "--out", str(tmp_path / "out"), "--quiet", "--mqtt", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: a0: broker {wrong_name}: TLS handshake failed: the broker's "
                           "certificate does not verify against") and "'127.0.0.1'" in line
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 60


def test_a_refused_login_fails_at_once_and_says_whose(secure: SecureBroker) -> None:
    pki = secure.folder / "pki"
    tls = TlsFiles(str(pki / "ca.pem"), str(pki / "clients" / "a0.pem"), str(pki / "clients" / "a0.key"))
    client = MqttClient(secure.url, f"{secure.fleet}-wrong", username="a0", password="not-a0s-secret",
                        tls=tls, protocol=0)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"refused the login \(.*\): it does not accept the "
                                              r"credentials of MQTT user 'a0'"):
        client.start(timeout_s=30)
    assert time.monotonic() - started < 10  # not the whole timeout
