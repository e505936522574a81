"""`parse-edge broker`: mosquitto-conf writes working files from a fleet config; run serves MQTT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.client import MqttClient
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


def test_mosquitto_conf_from_config_runs_under_mosquitto(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    port = free_port()
    config = _config(tmp_path, f"broker: {{url: 'mqtt://127.0.0.1:{port}', username: fleet, "
                               f"password: pw}}\n")
    out = tmp_path / "mq"
    # Execute
    status = main(["broker", "mosquitto-conf", str(config), "--out", str(out), "--bind", "127.0.0.1",
                   "--no-persistence"])
    # Assert
    assert status == 0
    printed = capsys.readouterr().out
    assert "acl (8 agents" in printed and "passwd" in printed
    acl = (out / "acl").read_text()
    assert "a0, a1, a2, a3, a4, a5, a6, a7" in acl
    assert "pattern write parse/basic-motions-demo/updates/%u/#" in acl
    assert f"listener {port} 127.0.0.1" in (out / "mosquitto.conf").read_text()
    with MosquittoProcess(out / "mosquitto.conf", port) as mosquitto, \
            MqttClient(mosquitto.url, "a0", username="fleet", password="pw") as client:
        assert client.is_connected


def test_mosquitto_conf_bad_input_is_a_one_line_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = main(["broker", "mosquitto-conf", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert missing == 2 and "nope.yaml" in capsys.readouterr().err
    config = _config(tmp_path, "broker: {username: fleet}\n")
    half = main(["broker", "mosquitto-conf", str(config), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert half == 2 and err.startswith("error: ") and "username and password" in err
    assert not (tmp_path / "o" / "mosquitto.conf").exists()
    tls = _config(tmp_path, "broker: {tls: {ca_file: ca.pem}}\n")
    assert main(["broker", "mosquitto-conf", str(tls), "--out", str(tmp_path / "t")]) == 2
    assert "server certificate and key" in capsys.readouterr().err


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
