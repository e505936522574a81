"""Execution-provider choice: preference order, device profiles, override, clean fallback."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from devices.profiles import get_profile
from devices.providers import CPU, ProviderError, make_session, select_providers
from devices.runtime import Predictor
from tests.exporters_toy import toy_bundle

TRT, CUDA, XNN = "TensorrtExecutionProvider", "CUDAExecutionProvider", "XnnpackExecutionProvider"
JETSON_BUILD = [TRT, CUDA, CPU]
PI_BUILD = [XNN, CPU]


def mine(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "devices.providers"]


def test_preference_is_tensorrt_then_cuda_then_xnnpack_then_cpu():
    assert select_providers(JETSON_BUILD) == [TRT, CUDA, CPU]
    assert select_providers([CUDA, CPU]) == [CUDA, CPU]
    assert select_providers(PI_BUILD) == [XNN, CPU]
    assert select_providers([CPU, "AzureExecutionProvider"]) == [CPU]


def test_the_device_profile_limits_the_choice():
    pi = get_profile("rpi4").onnx_providers
    assert select_providers([*JETSON_BUILD, XNN], pi) == [XNN, CPU]
    jetson = get_profile("jetson-orin-nano").onnx_providers
    assert select_providers([*JETSON_BUILD, XNN], jetson) == [TRT, CUDA, CPU]


def test_override_wins_when_available_and_falls_back_with_one_warning(caplog):
    assert select_providers(JETSON_BUILD, override="cuda") == [CUDA, CPU]
    assert select_providers(JETSON_BUILD, override="cpu") == [CPU]
    with caplog.at_level(logging.WARNING, logger="devices.providers"):
        chosen = select_providers(PI_BUILD, override="tensorrt")
    assert chosen == [XNN, CPU]
    assert len(mine(caplog)) == 1 and "not available" in mine(caplog)[0].getMessage()
    with pytest.raises(ProviderError, match="--provider 'quantum'"):
        select_providers(PI_BUILD, override="quantum")


def test_a_provider_that_does_not_load_falls_back_to_cpu_with_one_warning(caplog, recwarn):
    toy = toy_bundle("mlp", ("accel", "gyro"))
    path = str(next(toy.dir.glob("fused-accel+gyro*.onnx")))
    with caplog.at_level(logging.WARNING, logger="devices.providers"):
        session = make_session(path, ort.SessionOptions(), [CUDA, CPU])
    assert session.get_providers() == [CPU]
    assert len(mine(caplog)) == 1 and CUDA in mine(caplog)[0].getMessage()
    assert not [w for w in recwarn if "provider" in str(w.message)]  # not onnxruntime's own too
    x = {m: toy.xs[m][:2] for m in ("accel", "gyro")}
    (logits,) = session.run(["logits"], x)
    assert np.isfinite(logits).all() and logits.shape[0] == 2


def test_predictor_uses_the_chosen_providers(caplog):
    toy = toy_bundle("mlp", ("accel", "gyro"))
    with caplog.at_level(logging.WARNING, logger="devices.providers"):
        predictor = Predictor(toy.dir, provider="cuda", profile="jetson-nano")
    assert predictor.providers == [p for p in ort.get_available_providers()
                                   if p in (TRT, CUDA)] + [CPU]
    result = predictor.predict({m: toy.raw[m][:2] for m in ("accel", "gyro")})
    assert len(result.labels) == 2
    if CUDA not in ort.get_available_providers():
        assert len(mine(caplog)) == 1
