"""Machine probe and `parse-edge devices` on recorded board trees and on this machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devices.probe import host_profile, parse_tegra_release, probe_machine
from edge.cli import main
from tests.devices_support import RecordedCommands, board


@pytest.mark.parametrize(("name", "model", "l4t", "cpu", "cores", "memory_mb", "profile"), [
    ("rpi5", "Raspberry Pi 5 Model B Rev 1.0", None, "Cortex-A76", 4, 8052, "rpi5"),
    ("rpi4", "Raspberry Pi 4 Model B Rev 1.4", None, "Cortex-A72", 4, 3793, "rpi4"),
    ("jetson-nano", "NVIDIA Jetson Nano Developer Kit", "R32.7.1", "Cortex-A57", 4, 3964,
     "jetson-nano"),
    ("jetson-orin-nano", "NVIDIA Jetson Orin Nano Developer Kit", "R35.4.1", "Cortex-A78AE", 6,
     7441, "jetson-orin-nano"),
    ("x86-rapl", None, None, "Intel(R) N100", 4, 15749, None),
])
def test_probe_recognises_recorded_boards(name, model, l4t, cpu, cores, memory_mb, profile):
    info = probe_machine(board(name), runner=RecordedCommands(board(name)))
    assert (info.model, info.l4t_release, info.cpu_model, info.cpu_cores, info.memory_mb,
            info.profile) == (model, l4t, cpu, cores, memory_mb, profile)
    assert info.arch == ("x86_64" if name == "x86-rapl" else "aarch64")
    assert [b.name for b in info.backends] == ["hwmon", "jetson", "i2c", "pmic", "rapl"]


def test_probe_of_an_empty_tree_has_absent_fields(tmp_path):
    info = probe_machine(tmp_path, arch="riscv64", with_backends=False)
    assert (info.model, info.l4t_release, info.cpu_model, info.memory_mb, info.profile) == (
        None, None, None, None, None)
    assert host_profile(tmp_path, arch="riscv64") is None
    assert host_profile(tmp_path, arch="x86_64").name == "x86"
    assert host_profile(board("rpi4")).name == "rpi4"


def test_tegra_release_parsing():
    assert parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, "
                               "EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC 2024") == "R36.3.0"
    assert parse_tegra_release("garbage") is None


def test_devices_table_for_a_recorded_orin(capsys):
    assert main(["devices", "--root", str(board("jetson-orin-nano"))]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA Jetson Orin Nano Developer Kit" in out and "R35.4.1" in out
    assert "hwmon   yes  ina3221:VDD_IN" in out
    assert "jetson-orin-nano" in out and "rpi5" in out  # the profile table follows


def test_devices_json_on_this_machine(capsys):
    assert main(["devices", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {b["name"] for b in doc["machine"]["backends"]} == {"hwmon", "jetson", "i2c", "pmic",
                                                                "rapl"}
    assert all(b["available"] or b["detail"] for b in doc["machine"]["backends"])
    assert doc["profiles"]["rpi4"]["idle_w"] == 1.6


def test_devices_watch_prints_live_power_and_temperature(capsys):
    argv = ["devices", "--root", str(board("rpi4-ina219")), "--watch", "--count", "2",
            "--interval", "0.05", "--json"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert lines[0]["power_w"] == pytest.approx(4.12)
    assert lines[0]["power_source"] == "measured:hwmon:ina219:power1"
    assert lines[1]["monotonic_s"] > lines[0]["monotonic_s"]


def test_devices_watch_table_on_a_recorded_orin(capsys):
    argv = ["devices", "--root", str(board("jetson-orin-nano")), "--watch", "--count", "1"]
    assert main(argv) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert "power W" in header
    assert " 5.14 " in row and " 48.2 " in row and "measured:hwmon:ina3221:VDD_IN" in row


@pytest.mark.parametrize("argv", [["--i2c", "ina999@1:0x40"], ["--interval", "0"],
                                  ["--interval", "nan"], ["--count", "-1"]])
def test_devices_bad_flags_are_one_line_errors(argv, capsys):
    assert main(["devices", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and err.count("\n") == 1


def test_devices_bad_environment_variable_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setenv("PARSE_EDGE_I2C_POWER", "ina260@1")
    assert main(["devices"]) == 2
    assert capsys.readouterr().err.startswith("error: PARSE_EDGE_I2C_POWER: ")


def test_devices_command_does_not_import_torch():
    code = ("import sys; from edge.cli import main; main(['devices', '--json']); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
