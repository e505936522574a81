"""Board telemetry from recorded trees: temperatures, trips, throttling, clocks, NIC and Wi-Fi."""

from __future__ import annotations

import datetime

import pytest

from devices.telemetry import (
    TelemetryReader,
    parse_get_throttled,
    parse_net_dev,
    parse_net_wireless,
    read_telemetry,
)
from tests.devices_support import RecordedCommands, board, board_copy


def test_pi5_sample_has_soc_temperature_clock_counters_wifi_and_throttling():
    # Execute
    root = board("rpi5")
    sample = read_telemetry(root, RecordedCommands(root))
    # Assert
    assert sample["soc_temp_c"] == pytest.approx(52.65) and sample["soc_zone"] == "cpu-thermal"
    assert sample["soc_trip_c"] == pytest.approx(50.0) and sample["soc_trip_type"] == "active"
    assert sample["thermal_trip_exceeded"] is False  # fan (active) trips are not throttling
    assert sample["cpu_freq_mhz"] == pytest.approx(2400.0)
    assert sample["cpu_freq_capped"] is False
    assert sample["net_wlan0_rx_bytes"] == 91823344 and sample["net_wlan0_tx_bytes"] == 18274411
    assert sample["net_lo_tx_bytes"] == 482196
    assert sample["wifi_wlan0_link"] == 54.0 and sample["wifi_wlan0_level_dbm"] == -56.0
    assert "wifi_wlan0_noise_dbm" not in sample  # -256: the driver does not report noise
    assert sample["pi_throttled_raw"] == 0 and sample["pi_under_voltage_now"] is False
    datetime.datetime.fromisoformat(str(sample["time_utc"]))
    assert str(sample["time_utc"]).endswith("+00:00")


def test_pi4_get_throttled_flags_are_decoded():
    # 0x50005: under-voltage now (bit 0) and throttled now (bit 2), both since boot (16, 18)
    flags = read_telemetry(board("rpi4"), RecordedCommands(board("rpi4")))
    assert flags["pi_throttled_raw"] == 0x50005
    assert flags["pi_under_voltage_now"] and flags["pi_throttled_now"]
    assert flags["pi_under_voltage_since_boot"] and flags["pi_throttled_since_boot"]
    assert not flags["pi_freq_capped_now"] and not flags["pi_soft_temp_limit_since_boot"]
    assert flags["cpu_freq_mhz"] == pytest.approx(600.0) and flags["cpu_freq_hw_max_mhz"] == 1800.0


@pytest.mark.parametrize("text", ["", "throttled=", "throttled=0xZZ", "error=1 error_msg=x",
                                  "throttled=0x50005 extra"])
def test_unexpected_get_throttled_output_gives_no_fields(text):
    assert parse_get_throttled(text) == {}


def test_jetson_nano_skips_the_pmic_placeholder_zone():
    sample = read_telemetry(board("jetson-nano"), RecordedCommands(board("jetson-nano")))
    assert sample["temp_pmic_die_c"] == pytest.approx(100.0)  # reported, but not the SoC
    assert sample["soc_temp_c"] == pytest.approx(36.5) and sample["soc_zone"] == "AO-therm"
    assert sample["cpu_freq_mhz"] == pytest.approx(102.0)
    assert not any(key.startswith("pi_") for key in sample)  # no vcgencmd on a Jetson


def test_orin_passive_trip_and_unused_zones(tmp_path):
    root = board_copy("jetson-orin-nano", tmp_path)
    sample = read_telemetry(root, RecordedCommands(root))
    assert "temp_cv0_thermal_c" not in sample  # -256 C: an unused sensor
    assert sample["soc_trip_c"] == pytest.approx(99.0) and sample["soc_trip_type"] == "passive"
    assert sample["thermal_trip_exceeded"] is False
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("99500\n")
    hot = read_telemetry(root, RecordedCommands(root))
    assert hot["thermal_trip_exceeded"] is True and hot["soc_temp_c"] == pytest.approx(99.5)


def test_missing_and_garbage_sources_are_absent_fields(tmp_path):
    root = board_copy("rpi5", tmp_path)
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("hot\n")
    (root / "proc/net/wireless").unlink()
    for cpu in range(4):
        (root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq").write_text("\n")
    sample = read_telemetry(root, RecordedCommands(root))
    assert not any(k.startswith(("soc_", "temp_", "wifi_")) for k in sample)
    assert "cpu_freq_mhz" not in sample and sample["cpu_freq_limit_mhz"] == 2400.0
    assert sample["net_wlan0_rx_bytes"] == 91823344
    assert set(read_telemetry(tmp_path / "nothing", RecordedCommands(tmp_path))) == {
        "time_utc", "monotonic_s"}


def test_vcgencmd_is_asked_once_when_absent():
    runner = RecordedCommands(board("x86-rapl"))
    reader = TelemetryReader(board("x86-rapl"), runner)
    reader.sample()
    reader.sample()
    assert runner.calls == [("vcgencmd", "get_throttled")]


def test_net_dev_parsing_handles_glued_counters_and_skips_malformed_lines():
    text = ("Inter-|   Receive |  Transmit\n face |bytes ...\n"
            "  eth0:123456789012 5 0 0 0 0 0 0 98765 4 0 0 0 0 0 0\n"
            "  bad: 1 2 3\n")
    assert parse_net_dev(text) == {"net_eth0_rx_bytes": 123456789012, "net_eth0_tx_bytes": 98765}


def test_wireless_level_outside_dbm_range_is_left_out():
    text = "h1\nh2\n wlan1: 0000   40.  195.  0        0      0      0      0      0        0\n"
    assert parse_net_wireless(text) == {"wifi_wlan1_link": 40.0}
