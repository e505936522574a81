"""Board side: device profiles, energy, telemetry, machine probe, meters, onnxruntime runtime.

Energy: backends (hwmon, jetson, i2c, pmic, rapl) behind devices.sensors, the sampler thread,
the estimate breakdown (devices.estimate) and EnergyMeter (devices.energy). devices.field: a
virtual field of network-namespace boards on one machine (docs/field.md). Nothing here imports
torch or edge/.
"""
