"""Energy backends against recorded sysfs trees and command outputs (tests/fixtures/boards)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.backends import BACKEND_NAMES, detect_backends, make_backends
from devices.hwmon import HwmonBackend
from devices.i2c import (
    I2cBackend,
    I2cSpecError,
    ina219_power_w,
    ina260_power_w,
    parse_i2c_spec,
    word,
)
from devices.jetson import JetsonBackend
from devices.pmic import PmicBackend, parse_pmic_read_adc, pmic_power_w
from devices.rapl import RaplBackend
from devices.sensors import SensorError, read_int
from tests.devices_support import RecordedCommands, board, board_copy, i2c_registers

# --- hwmon -----------------------------------------------------------------------------------


def test_hwmon_reads_the_kernel_ina219_power_in_microwatts():
    # Prepare: a Pi 4 with an INA219 bound to the ina2xx driver (power1_input = 4120000 uW)
    backend = HwmonBackend(board("rpi4-ina219") / "sys")
    # Execute
    sensor = backend.open()
    # Assert: cpu_thermal and rpi_volt (no power) are not board monitors
    assert sensor.label == "ina219:power1"
    assert sensor.power_w() == pytest.approx(4.12)


def test_hwmon_orin_nano_uses_the_vdd_in_rail_and_ignores_sum_channels():
    # Prepare: L4T 35 Orin Nano ina3221; in4-in7 (shunt uV, sum) and curr4 (sum) must not pair
    sensor = HwmonBackend(board("jetson-orin-nano") / "sys").open()
    # Assert: VDD_IN only, 4904 mV x 1048 mA
    assert sensor.label == "ina3221:VDD_IN"
    assert sensor.power_w() == pytest.approx(4.904 * 1.048)


def test_hwmon_agx_orin_sums_rails_of_two_chips_and_skips_not_connected_channels():
    sensor = HwmonBackend(board("jetson-agx-orin") / "sys").open()
    # 1-0040: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0; 1-0041: VDDQ_VDD2_1V8AO (two NC channels)
    assert sensor.label == "ina3221:VDD_GPU_SOC,VDD_CPU_CV,VIN_SYS_5V0,VDDQ_VDD2_1V8AO"
    expected = 19.984 * 0.240 + 19.984 * 0.080 + 5.064 * 0.740 + 5.064 * 0.140
    assert sensor.power_w() == pytest.approx(expected)


def test_hwmon_never_takes_a_gpu_or_battery_reading_for_board_power():
    # Prepare: x86 host with amdgpu power1_average and a battery's in0/curr1 (no pair)
    backend = HwmonBackend(board("x86-rapl") / "sys")
    # Execute
    with pytest.raises(SensorError) as err:
        backend.open()
    # Assert: the reason names what was seen but not used
    assert "no board power monitor" in str(err.value)
    assert backend.candidates() == ["amdgpu (hwmon2, not a board monitor)"]


def test_hwmon_garbage_and_vanished_files_raise_sensor_errors(tmp_path):
    root = board_copy("rpi4-ina219", tmp_path)
    sensor = HwmonBackend(root / "sys").open()
    power = root / "sys/devices/platform/soc/fe804000.i2c/i2c-1/1-0040/hwmon/hwmon2/power1_input"
    power.write_text("nan\n")
    with pytest.raises(SensorError, match="expected an integer"):
        sensor.power_w()
    power.write_text("4000000000\n")  # 4 kW: a unit mix-up, not a board
    with pytest.raises(SensorError, match="implausible"):
        sensor.power_w()
    power.unlink()
    with pytest.raises(SensorError, match="cannot read"):
        sensor.power_w()


def test_read_int_rejects_anything_but_one_integer(tmp_path):
    path = tmp_path / "value"
    for text in ("", "12 34", "1e3", "0x10", "inf"):
        path.write_text(text + "\n")
        with pytest.raises(SensorError):
            read_int(path)
    path.write_text("-12\n")
    assert read_int(path) == -12


# --- Jetson ----------------------------------------------------------------------------------


def test_jetson_nano_iio_layout_reads_pom_5v_in_in_milliwatts():
    sensor = JetsonBackend(board("jetson-nano") / "sys").open()
    assert sensor.label == "ina3221x:POM_5V_IN"
    assert sensor.power_w() == pytest.approx(1.388)


def test_jetson_iio_without_power_files_multiplies_millivolts_and_milliamps(tmp_path):
    root = board_copy("jetson-nano", tmp_path)
    device = root / "sys/devices/7000c400.i2c/i2c-6/6-0040/iio:device0"
    for index in range(3):
        (device / f"in_power{index}_input").unlink()
    assert JetsonBackend(root / "sys").open().power_w() == pytest.approx(5.024 * 0.276)


def test_jetson_backend_finds_the_orin_hwmon_layout_under_the_i2c_driver():
    sensor = JetsonBackend(board("jetson-orin-nano") / "sys").open()
    assert sensor.label == "ina3221:VDD_IN"
    assert sensor.power_w() == pytest.approx(4.904 * 1.048)


def test_jetson_backend_says_why_on_a_pi():
    with pytest.raises(SensorError, match="no Jetson INA3221"):
        JetsonBackend(board("rpi5") / "sys").open()


# --- Raspberry Pi 5 PMIC ---------------------------------------------------------------------


def test_pmic_sums_current_times_voltage_of_every_rail_with_both():
    # Prepare: recorded output, 12 rails with current and voltage, EXT5V/BATT voltage only
    runner = RecordedCommands(board("rpi5"))
    # Execute
    sensor = PmicBackend(runner).open()
    watts = sensor.power_w()
    # Assert: hand sum 0.37 + 0.396 + 0.36 + 0.055 + 0 + 0.22 + 0.24 + 1.2 + 0.00033 + 0.00165
    # + 0.004 + 0.102
    assert watts == pytest.approx(2.94898)
    assert runner.calls[-1] == ("vcgencmd", "pmic_read_adc")
    rails = parse_pmic_read_adc(runner(("vcgencmd", "pmic_read_adc")))
    assert len(rails) == 12 and rails["VDD_CORE"] == (1.5, 0.8)


def test_pmic_on_a_pi_4_is_unavailable_with_the_firmware_message():
    with pytest.raises(SensorError, match="Command not registered"):
        PmicBackend(RecordedCommands(board("rpi4"))).open()


def test_pmic_without_vcgencmd_is_unavailable_not_a_crash():
    with pytest.raises(SensorError, match="vcgencmd not found"):
        PmicBackend(RecordedCommands(board("x86-rapl"))).open()


@pytest.mark.parametrize("text", [
    "VDD_CORE_A current(7)=1.5A\nVDD_CORE_V volt(15)=0.8V\nVDD_CORE_W power(30)=1.2W",  # new kind
    "VDD_CORE_A current(7)=1.5V\nVDD_CORE_V volt(15)=0.8V",  # unit does not match the kind
    "VDD_CORE_A current(7)=nanA\nVDD_CORE_V volt(15)=0.8V",
    "VDD_CORE_A current(7)=1.5A\nVDD_CORE_A current(7)=1.6A\nVDD_CORE_V volt(15)=0.8V",
    "EXT5V_V volt(24)=5.1V",  # no rail with both readings
    "",
    "VDD_CORE_A current(7)=900.0A\nVDD_CORE_V volt(15)=5.0V",  # 4.5 kW
])
def test_pmic_unexpected_output_is_an_error_never_a_number(text):
    with pytest.raises(SensorError):
        pmic_power_w(text)


# --- RAPL ------------------------------------------------------------------------------------


def test_rapl_counts_through_a_counter_wrap(tmp_path):
    # Prepare: package-0 at 262140000000 uJ of a 262143328850 uJ range
    root = board_copy("x86-rapl", tmp_path)
    sensor = RaplBackend(root / "sys/class/powercap").open()
    counter = root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"
    # Execute: +2 J, then past the wrap to 1 J
    counter.write_text("262142000000\n")
    first = sensor.energy_j()
    counter.write_text("1000000\n")
    second = sensor.energy_j()
    # Assert
    assert sensor.label == "package-0"
    assert first == pytest.approx(2.0)
    assert second == pytest.approx(2.0 + (262143328850 - 262142000000 + 1000000) / 1e6)


def test_rapl_prefers_psys_and_rejects_an_out_of_range_counter(tmp_path):
    root = board_copy("x86-rapl", tmp_path)
    psys = root / "sys/class/powercap/intel-rapl:1"
    psys.mkdir()
    (psys / "name").write_text("psys\n")
    (psys / "energy_uj").write_text("5000000\n")
    (psys / "max_energy_range_uj").write_text("262143328850\n")
    backend = RaplBackend(root / "sys/class/powercap")
    assert [d.name for d in backend.domains()] == ["intel-rapl:1"]
    sensor = backend.open()
    (psys / "energy_uj").write_text("999999999999999\n")
    with pytest.raises(SensorError, match="outside"):
        sensor.energy_j()


def test_rapl_absent_or_unreadable_is_a_reason(tmp_path):
    with pytest.raises(SensorError, match="no RAPL package domain"):
        RaplBackend(tmp_path).open()
    root = board_copy("x86-rapl", tmp_path)
    (root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj").write_text("\n")
    with pytest.raises(SensorError, match="expected an integer"):
        RaplBackend(root / "sys/class/powercap").open()


# --- INA219 / INA260 over I2C: register conversion from recorded reads -----------------------


def test_ina260_power_from_recorded_registers():
    regs = i2c_registers("ina260.txt")
    assert word(regs[0xFE]) == 0x5449  # manufacturer ID "TI": the bytes are MSB first
    # 0x028a = 650 x 1.25 mA, 0x0fe6 = 4070 x 1.25 mV
    assert ina260_power_w(word(regs[0x01]), word(regs[0x02])) == pytest.approx(0.8125 * 5.0875)


def test_ina219_power_from_recorded_registers_without_calibration():
    regs = i2c_registers("ina219.txt")
    # shunt 0x1fb8 = 8120 x 10 uV = 81.2 mV over 0.1 ohm; bus (0x27a2 >> 3) x 4 mV = 5.072 V
    watts = ina219_power_w(word(regs[0x00]), word(regs[0x01]), word(regs[0x02]), 0.1)
    assert watts == pytest.approx(5.072 * 0.812)


def test_ina219_saturated_shunt_and_bad_bytes_are_errors():
    config = 0x399F  # PGA /8: +-320 mV
    with pytest.raises(SensorError, match="saturates"):
        ina219_power_w(config, 0x7D00, 0x27A2, 0.1)  # 32000 x 10 uV = the 320 mV limit
    with pytest.raises(SensorError, match="saturates"):
        ina219_power_w(0x019F, 0x0FA0, 0x27A2, 0.1)  # PGA /1 (40 mV) and a 40 mV drop
    with pytest.raises(SensorError):
        word([0x01])
    with pytest.raises(SensorError):
        ina260_power_w(0xFD76, 0x0FE6)  # negative current: a reversed shunt, not a board load


def test_i2c_spec_parsing():
    spec = parse_i2c_spec("ina219@1:0x41:0.05")
    assert (spec.chip, spec.bus, spec.address, spec.shunt_ohm) == ("ina219", 1, 0x41, 0.05)
    assert parse_i2c_spec("ina260@3:64").address == 0x40
    for bad in ("ina226@1:0x40", "ina260@1:0x20", "ina219@1:0x40:nan", "ina219@1:0x40:-1", "x"):
        with pytest.raises(I2cSpecError):
            parse_i2c_spec(bad)


def test_i2c_backend_on_this_machine_explains_what_is_missing():
    # This host has no /dev/i2c-9: smbus2 (installed with the dev extra) fails to open it.
    with pytest.raises(SensorError, match="cannot open /dev/i2c-9"):
        I2cBackend(parse_i2c_spec("ina260@9:0x40")).open()
    with pytest.raises(SensorError, match="PARSE_EDGE_I2C_POWER"):
        I2cBackend(None).open()


# --- all backends ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "available"), [
    ("rpi5", {"pmic"}),
    ("rpi4", set()),
    ("rpi4-ina219", {"hwmon"}),
    ("jetson-nano", {"jetson"}),
    ("jetson-orin-nano", {"hwmon", "jetson"}),
    ("x86-rapl", {"rapl"}),
])
def test_every_backend_reports_on_every_recorded_board(name, available, monkeypatch):
    monkeypatch.delenv("PARSE_EDGE_I2C_POWER", raising=False)
    root: Path = board(name)
    statuses = detect_backends(make_backends(root / "sys", runner=RecordedCommands(root)))
    assert [s.name for s in statuses] == list(BACKEND_NAMES)
    assert {s.name for s in statuses if s.available} == available
    assert all(s.detail for s in statuses)


def test_statuses_say_what_rapl_and_the_pmic_leave_out(monkeypatch):
    monkeypatch.delenv("PARSE_EDGE_I2C_POWER", raising=False)
    for name, backend, detail in (("x86-rapl", "rapl", "package-0 (CPU package only, not the board)"),
                                  ("rpi5", "pmic", "pmic_read_adc (PMIC output rails: no "
                                                   "conversion losses, no USB devices)")):
        root = board(name)
        statuses = detect_backends(make_backends(root / "sys", runner=RecordedCommands(root)))
        assert next(s.detail for s in statuses if s.name == backend) == detail
