"""`parse-edge broker`: credentials, certs and a secure mosquitto-conf that a real Mosquitto runs;
`run` serves MQTT."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.client import MqttClient, TlsFiles
from broker.embedded import free_port
from broker.mosquitto import MosquittoProcess
from edge.cli import main
from tests.broker_support import wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "edge" / "examples"


def _config(tmp_path: Path, extra: str) -> Path:
    text = (EXAMPLES / "basic-motions.yaml").read_text() + extra
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_default_mosquitto_conf_is_secure_and_runs_under_mosquitto(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    port = free_port()
    config = _config(tmp_path, f"broker: {{url: 'mqtt://127.0.0.1:{port}'}}\n")
    out = tmp_path / "mq"
    # Execute
    status = main(["broker", "mosquitto-conf", str(config), "--out", str(out), "--bind", "127.0.0.1",
                   "--no-persistence"])
    # Assert: per-agent credentials were made, the ACL names every agent, nobody anonymous
    assert status == 0
    printed = capsys.readouterr().out
    assert "acl (8 agents" in printed and "anonymous clients refused" in printed
    acl = (out / "acl").read_text()
    assert all(f"user a{i}" in acl for i in range(8)) and "user operator" in acl
    assert "topic write parse/basic-motions-demo/updates/a3/#" in acl
    conf = (out / "mosquitto.conf").read_text()
    assert f"listener {port} 127.0.0.1" in conf and "allow_anonymous false" in conf
    assert f"password_file {(out / 'credentials' / 'passwd').resolve()}" in conf
    secret = (out / "credentials" / "agents" / "a0.secret").read_text().strip()
    passwd = (out / "credentials" / "passwd").read_text()
    with MosquittoProcess(out / "mosquitto.conf", port) as mosquitto:
        with MqttClient(mosquitto.url, "a0", username="a0", password=secret) as client:
            assert client.is_connected
        with pytest.raises(ConnectionError, match=r"[Nn]ot authori[sz]ed"):
            MqttClient(mosquitto.url, "anon").start(timeout_s=2)
    # a second run keeps the secrets already handed out
    assert main(["broker", "mosquitto-conf", str(config), "--out", str(out)]) == 0
    assert (out / "credentials" / "passwd").read_text() == passwd
    # with persistence (the default), its database lives under --out, never in the machine's
    # own broker's /var/lib/mosquitto, and the broker (dropped to user mosquitto) may write it
    conf = (out / "mosquitto.conf").read_text()
    store = (out / "persistence").resolve()
    assert f"persistence_location {store}/" in conf and "/var/lib/mosquitto" not in conf
    assert store.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
    with MosquittoProcess(out / "mosquitto.conf", port):
        pass
    assert (store / "mosquitto.db").exists()


def test_credentials_certs_and_a_certificate_only_broker(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    port = free_port()
    config = _config(tmp_path, f"broker: {{url: 'mqtts://localhost:{port}'}}\n")
    # Execute
    assert main(["broker", "credentials", str(config), "--out", str(tmp_path / "creds")]) == 0
    assert main(["broker", "certs", str(config), "--out", str(tmp_path / "pki")]) == 0
    assert main(["broker", "mosquitto-conf", str(config), "--out", str(tmp_path / "mq"),
                 "--certs", str(tmp_path / "pki"), "--client-certs", "--bind", "127.0.0.1",
                 "--no-persistence"]) == 0
    printed = capsys.readouterr().out
    # Assert
    assert "8 agents: each into its own bundle only" in printed
    assert "names: localhost, 127.0.0.1" in printed and "log in by certificate" in printed
    assert oct((tmp_path / "creds" / "agents" / "a5.secret").stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in (tmp_path / "pki" / "clients").glob("*.pem"))[:2] == ["a0.pem", "a1.pem"]
    conf = (tmp_path / "mq" / "mosquitto.conf").read_text()
    assert "use_identity_as_username true" in conf and "password_file" not in conf
    pki = tmp_path / "pki"
    with MosquittoProcess(tmp_path / "mq" / "mosquitto.conf", port, tls=True):
        tls = TlsFiles(str(pki / "ca.pem"), str(pki / "clients" / "a2.pem"), str(pki / "clients" / "a2.key"))
        with MqttClient(f"mqtts://localhost:{port}", "a2", tls=tls) as client:
            assert client.is_connected
    # credentials are not silently replaced
    assert main(["broker", "credentials", str(config), "--out", str(tmp_path / "creds")]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("extra_config,argv,match", [
    ("broker: {tls: {ca_file: ca.pem}}\n", [], "server certificate and key"),
    ("", ["--client-certs"], "--client-certs: needs --certs"),
    ("", ["--credentials", "{tmp}/empty"], "no passwd file"),
    ("", ["--max-packet-kib", "1"], "--max-packet-kib: max_packet_bytes"),
    ("", ["--certs", "{tmp}/nopki"], "--certs: ca_file: no such file"),
])
def test_mosquitto_conf_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      extra_config: str, argv: list[str], match: str) -> None:
    config = _config(tmp_path, extra_config)
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    status = main(["broker", "mosquitto-conf", str(config), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "mosquitto.conf").exists()


def test_bad_input_of_credentials_and_certs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = main(["broker", "credentials", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert missing == 2 and "nope.yaml" in capsys.readouterr().err
    config = _config(tmp_path, "")
    assert main(["broker", "certs", str(config), "--out", str(tmp_path / "p"), "--days", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --days: days: expected 1..3650")
    assert main(["broker", "certs", str(config), "--out", str(tmp_path / "p"), "--hostname", "a b"]) == 2
    assert capsys.readouterr().err.startswith("error: --hostname: hostname:")


def test_broker_run_serves_until_interrupted() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "edge", "broker", "run", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(EXAMPLES.parents[1])})
    try:
        assert process.stdout is not None
        assert f"mqtt://127.0.0.1:{port}" in process.stdout.readline()
        client = MqttClient(f"mqtt://127.0.0.1:{port}", "probe")
        assert wait_for(lambda: _connects(client), 10)
        client.stop()
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _connects(client: MqttClient) -> bool:
    try:
        client.start(timeout_s=1)
        return True
    except ConnectionError:
        return False
