"""Energy: the profile estimate, RAPL and INA3221 readers on sysfs trees, and backend choice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devices.energy import (
    EnergyMeter,
    Ina3221Reader,
    RaplReader,
    detect_backends,
    estimate_energy_j,
    integrate_power_j,
)
from devices.meters import ResourceUsage
from devices.profiles import get_profile


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_estimate_is_idle_plus_busy_share_plus_network():
    # Prepare: rpi4 = 2.7 W idle, +3.7 W with all 4 cores busy, 0.05 J/MB
    rpi4 = get_profile("rpi4")
    # Execute
    energy = estimate_energy_j(rpi4, wall_s=10.0, cpu_s=8.0, bytes_on_wire=20_000_000)
    # Assert: 2.7*10 + 3.7*(8/4) + 0.05*20
    assert energy == pytest.approx(27.0 + 7.4 + 1.0)


def test_estimate_caps_the_busy_share_at_every_core_busy():
    x86 = get_profile("x86")
    capped = estimate_energy_j(x86, wall_s=1.0, cpu_s=100.0)
    assert capped == pytest.approx(x86.idle_w + x86.active_extra_w)


def test_estimate_rejects_negative_quantities():
    with pytest.raises(ValueError, match="non-negative"):
        estimate_energy_j(get_profile("x86"), wall_s=-1.0, cpu_s=0.0)


def test_trapezoidal_integration():
    assert integrate_power_j([(0.0, 2.0), (1.0, 4.0), (3.0, 4.0)]) == pytest.approx(3.0 + 8.0)
    assert integrate_power_j([(0.0, 5.0)]) == 0.0


def _rapl_tree(root: Path, energy_uj: dict[str, int], psys: bool = False) -> None:
    for i, (name, value) in enumerate(energy_uj.items()):
        _write(root / f"intel-rapl:{i}" / "name", name)
        _write(root / f"intel-rapl:{i}" / "energy_uj", str(value))
        _write(root / f"intel-rapl:{i}" / "max_energy_range_uj", "1000000000")
    _write(root / "intel-rapl:0:0" / "name", "core")  # sub-domain: inside package-0 already
    _write(root / "intel-rapl:0:0" / "energy_uj", "999")
    if psys:
        _write(root / "intel-rapl:9" / "name", "psys")
        _write(root / "intel-rapl:9" / "energy_uj", "5000000")


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    # Prepare
    _rapl_tree(tmp_path, {"package-0": 999_000_000, "package-1": 1_000_000})
    reader = RaplReader(tmp_path)
    start = reader.read_uj()
    # Execute: package-0 wraps past its 1e9 uJ range, package-1 advances 2 J
    _write(tmp_path / "intel-rapl:0" / "energy_uj", "500000")
    _write(tmp_path / "intel-rapl:1" / "energy_uj", "3000000")
    joules = reader.delta_j(start, reader.read_uj())
    # Assert: (1e9 - 999e6 + 0.5e6) + 2e6 uJ
    assert joules == pytest.approx(1.5 + 2.0)
    assert set(start) == {"intel-rapl:0", "intel-rapl:1"}
    assert reader.status().available


def test_rapl_prefers_psys_alone(tmp_path):
    _rapl_tree(tmp_path, {"package-0": 1}, psys=True)
    assert [d.name for d in RaplReader(tmp_path).domains()] == ["intel-rapl:9"]


def test_rapl_unreadable_counter_is_reported_not_raised(tmp_path):
    # Prepare: a counter that is not a number stands in for one we may not read
    _rapl_tree(tmp_path, {"package-0": 1})
    _write(tmp_path / "intel-rapl:0" / "energy_uj", "")
    # Execute
    status = RaplReader(tmp_path).status()
    # Assert
    assert not status.available and "cannot read" in status.reason


def test_ina3221_iio_layout_uses_the_input_rail(tmp_path):
    # Prepare: Jetson Nano L4T layout, mW per rail; POM_5V_IN is the whole board
    dev = tmp_path / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for idx, (label, mw) in enumerate([("POM_5V_IN", 4200), ("POM_5V_GPU", 800),
                                       ("POM_5V_CPU", 1500)]):
        _write(dev / f"rail_name_{idx}", label)
        _write(dev / f"in_power{idx}_input", str(mw))
    # Execute / Assert
    assert Ina3221Reader(tmp_path).read_power_w() == pytest.approx(4.2)


def test_ina3221_hwmon_layout_multiplies_volts_and_amps(tmp_path):
    # Prepare: Orin hwmon layout, mV and mA per channel, no *_IN label -> sum of rails
    hw = tmp_path / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    _write(hw / "name", "ina3221")
    for idx, (label, mv, ma) in enumerate([("VDD_CPU", 5000, 400), ("VDD_SOC", 5000, 200)],
                                          start=1):
        _write(hw / f"in{idx}_label", label)
        _write(hw / f"in{idx}_input", str(mv))
        _write(hw / f"curr{idx}_input", str(ma))
    # Execute / Assert
    assert Ina3221Reader(tmp_path).read_power_w() == pytest.approx(2.0 + 1.0)


def test_absent_backends_are_reported_and_auto_falls_back_to_the_estimate(tmp_path):
    # Prepare
    statuses = detect_backends(tmp_path / "powercap", tmp_path / "sys")
    meter = EnergyMeter("rpi5", powercap_root=tmp_path / "powercap", sys_root=tmp_path / "sys")
    usage = ResourceUsage(wall_s=4.0, cpu_user_s=1.5, cpu_sys_s=0.5, peak_rss_mb=10.0)
    # Execute
    result = meter.start().stop(usage, bytes_on_wire=2_000_000)
    # Assert
    assert [(s.name, s.available) for s in statuses] == [("ina3221", False), ("rapl", False)]
    assert result.source == "estimated:rpi5"
    assert result.energy_j == pytest.approx(3.0 * 4.0 + 5.0 * 0.5 + 0.05 * 2)
    assert result.avg_power_w == pytest.approx(result.energy_j / 4.0)


def test_this_machine_never_crashes_detection():
    statuses = detect_backends()
    assert {s.name for s in statuses} == {"ina3221", "rapl"}
    assert all(s.available or s.reason for s in statuses)


def test_measured_mode_without_a_backend_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"no readable backend.*no RAPL package domain"):
        EnergyMeter("x86", mode="measured", powercap_root=tmp_path, sys_root=tmp_path)


def test_auto_mode_measures_with_rapl_and_counts_a_wrap_between_reads(tmp_path):
    # Prepare: counter range 1e9 uJ = 1000 J
    _rapl_tree(tmp_path, {"package-0": 10_000_000})
    meter = EnergyMeter("x86", powercap_root=tmp_path, sys_root=tmp_path / "none").start()
    counter = tmp_path / "intel-rapl:0" / "energy_uj"
    # Execute: +3.5 J, then +985 J, then a wrap adding 10 J: two reads span > one range
    _write(counter, "13500000")
    first = meter.read()
    _write(counter, "998500000")
    second = meter.read()
    _write(counter, "8500000")
    third = meter.stop()
    # Assert
    assert first.source == "measured:rapl" and first.energy_j == pytest.approx(3.5)
    assert second.energy_j == pytest.approx(3.5 + 985.0)
    assert third.energy_j == pytest.approx(3.5 + 985.0 + 10.0)


def test_ina3221_meter_integrates_sampled_power_and_keeps_running(tmp_path):
    # Prepare: a constant 6 W board
    dev = tmp_path / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    _write(dev / "rail_name_0", "VDD_IN")
    _write(dev / "in_power0_input", "6000")
    meter = EnergyMeter("jetson-nano", powercap_root=tmp_path / "none", sys_root=tmp_path,
                        sample_interval_s=0.01)
    # Execute
    meter.start()
    time.sleep(0.05)
    first = meter.read()
    _write(dev / "in_power0_input", "12000")  # the board gets busier
    time.sleep(0.05)
    second = meter.stop()
    meter.close()
    # Assert: 6 W, then up to 12 W, over spans that lie within the measured intervals
    assert first.source == "measured:ina3221"
    assert 0.5 * 6.0 * first.wall_s < first.energy_j <= 6.0 * first.wall_s + 1e-9
    assert second.energy_j > first.energy_j + 6.0 * 0.04
    assert second.energy_j <= first.energy_j + 12.0 * (second.wall_s - first.wall_s) + 1e-9


def test_estimate_needs_usage(tmp_path):
    meter = EnergyMeter("x86", mode="estimated").start()
    with pytest.raises(ValueError, match="ResourceUsage"):
        meter.stop()
