"""Energy: the estimate breakdown by hand, the meter on recorded sensors, fallback and resume."""

from __future__ import annotations

import json
import logging
import time

import pytest

from devices.energy import EnergyMeter, EnergyUnavailable
from devices.estimate import EnergyBreakdown, EnergyTotalsError, estimate_parts, join_sources
from devices.hwmon import HwmonBackend
from devices.meters import ResourceUsage
from devices.pmic import PmicBackend
from devices.profiles import PROFILES, get_profile
from devices.rapl import RaplBackend
from tests.devices_support import RecordedCommands, board, board_copy

INA219_POWER = "sys/devices/platform/soc/fe804000.i2c/i2c-1/1-0040/hwmon/hwmon2/power1_input"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def usage(cpu_s: float) -> ResourceUsage:
    return ResourceUsage(wall_s=0.0, cpu_user_s=cpu_s, cpu_sys_s=0.0, peak_rss_mb=1.0)


# --- the estimate ----------------------------------------------------------------------------


def test_estimate_breakdown_by_hand_for_a_pi4_simulated_on_the_x86_reference():
    # Prepare: rpi4 idle 1.6 W, busy +3.4 W over 4 cores, 1769 MIPS; x86 reference 3910 MIPS
    rpi4, x86 = get_profile("rpi4"), get_profile("x86")
    # Execute: 100 s wall, 10 host CPU seconds, 1 MB sent, 2 MB received
    parts = estimate_parts(rpi4, x86, wall_s=100.0, cpu_s=10.0, bytes_sent=1_000_000,
                           bytes_received=2_000_000)
    # Assert
    board_cpu_s = 10.0 * 3910 / 1769  # 22.10 s on the Pi's slower core
    assert parts.board_cpu_s == pytest.approx(board_cpu_s)
    assert parts.idle_j == pytest.approx(160.0)
    assert parts.compute_j == pytest.approx(board_cpu_s * 3.4 / 4)  # 18.79 J
    # Huang et al. Wi-Fi: 283.17 mW/Mbps up, 137.01 mW/Mbps down
    assert parts.radio_j == pytest.approx(8e6 * 0.28317e-6 + 16e6 * 0.13701e-6)  # 4.46 J
    assert parts.total_j == pytest.approx(160.0 + board_cpu_s * 0.85 + 4.45752)


def test_estimate_on_the_board_itself_does_not_scale_cpu_seconds():
    rpi5 = get_profile("rpi5")
    parts = estimate_parts(rpi5, rpi5, wall_s=10.0, cpu_s=4.0)
    assert parts.board_cpu_s == 4.0
    assert parts.compute_j == pytest.approx(4.0 * (9.7 - 2.8) / 4)


def test_attributable_energy_does_not_depend_on_wall_time():
    # The same work (CPU seconds, bytes) stretched over twice the wall time by a loaded host
    rpi4, x86 = get_profile("rpi4"), get_profile("x86")
    quick = estimate_parts(rpi4, x86, wall_s=50.0, cpu_s=30.0, bytes_sent=5_000_000)
    slow = estimate_parts(rpi4, x86, wall_s=100.0, cpu_s=30.0, bytes_sent=5_000_000)
    assert quick.compute_j + quick.radio_j == slow.compute_j + slow.radio_j
    assert slow.idle_j == pytest.approx(2 * quick.idle_j)


@pytest.mark.parametrize("kwargs", [{"wall_s": -1.0, "cpu_s": 0.0}, {"wall_s": 1.0, "cpu_s": float("nan")},
                                    {"wall_s": float("inf"), "cpu_s": 0.0},
                                    {"wall_s": 1.0, "cpu_s": 0.0, "bytes_sent": -5}])
def test_estimate_rejects_negative_and_non_finite_inputs(kwargs):
    with pytest.raises(ValueError, match="non-negative finite"):
        estimate_parts(get_profile("rpi4"), get_profile("rpi4"), **kwargs)


def test_every_profile_is_positive_and_the_reference_is_the_fastest_core():
    for profile in PROFILES.values():
        assert profile.busy_w > profile.idle_w > 0
        assert profile.core_w * profile.cpu_cores == pytest.approx(profile.active_extra_w)
    assert max(PROFILES.values(), key=lambda p: p.cpu_speed_mips).name == "x86"


# --- the breakdown record --------------------------------------------------------------------


def _breakdown(**overrides: object) -> EnergyBreakdown:
    values = dict(energy_j=10.0, idle_j=6.0, compute_j=3.0, radio_j=1.0,
                  source="estimated:rpi4", breakdown_source="estimated:rpi4", wall_s=4.0,
                  cpu_s=2.0, board_cpu_s=4.4, bytes_sent=100, bytes_received=50,
                  host_profile="x86")
    values.update(overrides)
    return EnergyBreakdown(**values)  # type: ignore[arg-type]


def test_breakdown_round_trips_through_json():
    b = _breakdown(restarts=2, fallback_reason="gone")
    doc = json.loads(json.dumps(b.to_dict()))
    assert doc["attributable_j"] == 4.0
    assert EnergyBreakdown.from_dict(doc) == b
    assert b.avg_power_w == 2.5


@pytest.mark.parametrize(("field", "value"), [("energy_j", float("nan")), ("idle_j", -1.0),
                                              ("bytes_sent", 1.5), ("cpu_s", True),
                                              ("source", ""), ("restarts", -1)])
def test_breakdown_from_bad_totals_names_the_field(field, value):
    doc = _breakdown().to_dict()
    doc[field] = value
    with pytest.raises(EnergyTotalsError, match=f"energy totals: {field}: expected"):
        EnergyBreakdown.from_dict(doc)
    doc.pop(field)
    if field != "restarts":
        with pytest.raises(EnergyTotalsError, match=f"{field}: missing"):
            EnergyBreakdown.from_dict(doc)


def test_sources_join_once_in_order():
    assert join_sources("measured:rapl:package-0,package-1", "estimated:x86",
                        "measured:rapl:package-0,package-1") == (
        "measured:rapl:package-0,package-1+estimated:x86")


# --- the meter -------------------------------------------------------------------------------


def test_estimated_meter_reads_the_breakdown_with_its_own_clock():
    clock, cpu = Clock(), Clock()
    meter = EnergyMeter("rpi5", mode="estimated", host_profile="x86", clock=clock, cpu_clock=cpu)
    meter.start()
    clock.t += 20.0
    cpu.t += 3.0  # this process's CPU time, used when no usage is passed
    b = meter.read(bytes_sent=1000)
    assert b.source == "estimated:rpi5" and b.host_profile == "x86"
    assert b.wall_s == 20.0 and b.cpu_s == 3.0
    assert b.idle_j == pytest.approx(2.8 * 20.0)
    assert b.compute_j == pytest.approx(3.0 * 3910 / 3305 * (9.7 - 2.8) / 4)
    assert b.energy_j == pytest.approx(b.idle_j + b.attributable_j)


def test_measured_meter_integrates_hwmon_power_with_the_trapezoid(tmp_path):
    # Prepare: the INA219 reads 4.12 W at start; background sampling off (1 h period)
    root = board_copy("rpi4-ina219", tmp_path)
    clock = Clock()
    meter = EnergyMeter("rpi4", backends=[HwmonBackend(root / "sys")], host_profile="rpi4",
                        sample_interval_s=3600, clock=clock).start()
    # Execute: 10 s later the board draws 6 W
    clock.t += 10.0
    (root / INA219_POWER).write_text("6000000\n")
    b = meter.read(usage(2.0), bytes_sent=0)
    meter.close()
    # Assert
    assert b.source == "measured:hwmon:ina219:power1"
    assert b.energy_j == pytest.approx(10.0 * (4.12 + 6.0) / 2)
    assert b.breakdown_source == "estimated:rpi4"
    assert b.idle_j == pytest.approx(16.0) and b.compute_j == pytest.approx(2.0 * 0.85)
    assert b.fallback_reason is None


def test_a_vanished_sensor_falls_back_to_the_estimate_with_one_warning(tmp_path, caplog):
    # Prepare
    root = board_copy("rpi4-ina219", tmp_path)
    clock = Clock()
    meter = EnergyMeter("rpi4", backends=[HwmonBackend(root / "sys")], host_profile="rpi4",
                        sample_interval_s=3600, clock=clock, max_failures=1).start()
    clock.t += 10.0
    first = meter.read(usage(1.0))
    # Execute: the sensor disappears (module unloaded, cable pulled); two more reads
    (root / INA219_POWER).unlink()
    clock.t += 5.0
    with caplog.at_level(logging.WARNING, logger="devices.energy"):
        second = meter.read(usage(3.0))
        clock.t += 5.0
        third = meter.read(usage(3.0))
    meter.close()
    # Assert: measured up to the last good read, then the estimate's growth since then
    assert first.energy_j == pytest.approx(41.2)
    estimate_growth = 1.6 * 5.0 + (3.0 - 1.0) * 0.85
    assert second.energy_j == pytest.approx(41.2 + estimate_growth)
    assert third.energy_j == pytest.approx(41.2 + estimate_growth + 1.6 * 5.0)
    assert third.source == "measured:hwmon:ina219:power1+estimated:rpi4"
    assert third.fallback_reason is not None and "cannot read" in third.fallback_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost" in warnings[0].getMessage()


def test_garbage_mid_run_is_bridged_until_the_failure_limit(tmp_path):
    root = board_copy("rpi4-ina219", tmp_path)
    clock = Clock()
    meter = EnergyMeter("rpi4", backends=[HwmonBackend(root / "sys")], host_profile="rpi4",
                        sample_interval_s=3600, clock=clock, max_failures=3).start()
    (root / INA219_POWER).write_text("garbage\n")
    clock.t += 5.0
    assert meter.read(usage(0.0)).energy_j == 0.0  # one failed read: still measuring
    (root / INA219_POWER).write_text("4120000\n")
    clock.t += 5.0
    b = meter.read(usage(0.0))
    meter.close()
    assert b.source == "measured:hwmon:ina219:power1"
    assert b.energy_j == pytest.approx(10.0 * 4.12)  # the trapezoid spans the bad read


def test_rapl_meter_keeps_counting_across_a_wrap(tmp_path):
    root = board_copy("x86-rapl", tmp_path)
    counter = root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"
    meter = EnergyMeter("x86", backends=[RaplBackend(root / "sys/class/powercap")],
                        sample_interval_s=3600).start()
    counter.write_text("262143000000\n")
    assert meter.read(usage(0.0)).energy_j == pytest.approx(3.0)
    counter.write_text("671150\n")  # wrapped: 328850 uJ to the end of the range, then 671150
    b = meter.read(usage(0.0))
    meter.close()
    assert b.source == "measured:rapl:package-0"
    assert b.energy_j == pytest.approx(4.0)


def test_pmic_meter_names_its_source():
    meter = EnergyMeter("rpi5", backends=[PmicBackend(RecordedCommands(board("rpi5")))],
                        sample_interval_s=3600)
    assert meter.source == "measured:pmic:pmic_read_adc"


def test_measured_mode_without_any_sensor_is_a_one_line_value_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PARSE_EDGE_I2C_POWER", raising=False)
    with pytest.raises(EnergyUnavailable) as err:
        EnergyMeter("rpi4", mode="measured", sys_root=board("rpi4") / "sys",
                    runner=RecordedCommands(board("rpi4")))
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    for name in ("hwmon:", "jetson:", "i2c:", "pmic:", "rapl:"):
        assert name in message
    assert "Command not registered" in message


def test_auto_mode_without_a_sensor_estimates(monkeypatch):
    monkeypatch.delenv("PARSE_EDGE_I2C_POWER", raising=False)
    meter = EnergyMeter("rpi4", sys_root=board("rpi4") / "sys",
                        runner=RecordedCommands(board("rpi4")))
    assert meter.source == "estimated:rpi4" and meter.backend_name is None


def test_resume_adds_the_stored_totals_and_counts_the_restart():
    # Prepare: a first process runs 10 s and stores its totals (as a checkpoint would, in JSON)
    clock = Clock()
    first = EnergyMeter("rpi4", mode="estimated", host_profile="rpi4", clock=clock).start()
    clock.t += 10.0
    stored = json.loads(json.dumps(first.read(usage(2.0), bytes_sent=100, bytes_received=40)
                                   .to_dict()))
    # Execute: a new process resumes and runs 5 s more, its own counters starting at zero
    second = EnergyMeter("rpi4", mode="estimated", host_profile="rpi4", clock=clock).start()
    second.resume_from(stored)
    clock.t += 5.0
    b = second.read(usage(1.0), bytes_sent=10, bytes_received=0)
    # Assert: continuing, not restarting
    assert b.wall_s == pytest.approx(15.0) and b.cpu_s == pytest.approx(3.0)
    assert b.bytes_sent == 110 and b.bytes_received == 40
    assert b.idle_j == pytest.approx(1.6 * 15.0)
    assert b.energy_j == pytest.approx(stored["energy_j"] + 1.6 * 5.0 + 0.85 * 1.0 + 10 * 2.26536e-6)
    assert b.restarts == 1


def test_resume_rejects_corrupt_totals():
    meter = EnergyMeter("rpi4", mode="estimated", host_profile="rpi4")
    with pytest.raises(EnergyTotalsError, match="energy_j"):
        meter.resume_from({**_breakdown().to_dict(), "energy_j": "lots"})


def test_read_needs_start_and_a_closed_measuring_meter_cannot_be_read(tmp_path):
    root = board_copy("rpi4-ina219", tmp_path)
    meter = EnergyMeter("rpi4", backends=[HwmonBackend(root / "sys")], sample_interval_s=3600)
    with pytest.raises(RuntimeError, match="start"):
        meter.read(usage(0.0))
    meter.start()
    meter.close()
    with pytest.raises(RuntimeError, match="start"):
        meter.read(usage(0.0))


def test_the_sampler_thread_integrates_in_the_background(tmp_path):
    # Prepare: a real thread sampling every 10 ms on the monotonic clock
    root = board_copy("rpi4-ina219", tmp_path)
    meter = EnergyMeter("rpi4", backends=[HwmonBackend(root / "sys")],
                        sample_interval_s=0.01).start()
    # Execute
    time.sleep(0.1)
    first = meter.read(usage(0.0))
    (root / INA219_POWER).write_text("8240000\n")  # the board doubles its draw
    time.sleep(0.1)
    second = meter.read(usage(0.0))
    meter.close()
    # Assert: 4.12 W, then up to 8.24 W, over the measured wall time
    assert 0.99 * 4.12 * first.wall_s < first.energy_j <= 4.12 * first.wall_s
    added_j = second.energy_j - first.energy_j
    added_s = second.wall_s - first.wall_s
    assert 4.12 * added_s < added_j <= 8.24 * added_s + 1e-9


def test_the_agent_call_shape_still_works():
    # edge/agent.py today: EnergyMeter(device, mode=...).start(); read(usage, wire_bytes)
    meter = EnergyMeter("rpi4", mode="estimated").start()
    b = meter.read(usage(1.0), 1000)
    meter.close()
    assert b.bytes_sent == 1000 and b.energy_j > 0 and meter.source == "estimated:rpi4"
