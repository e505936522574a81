"""Choose the onnxruntime execution provider a board serves with, and fall back cleanly.

Order of preference (the onnxruntime docs' own advice for NVIDIA boards: TensorRT, then CUDA, then
CPU — https://onnxruntime.ai/docs/execution-providers/): ``TensorrtExecutionProvider`` >
``CUDAExecutionProvider`` > ``XnnpackExecutionProvider`` (ARM CPUs, where the build has it) >
``CPUExecutionProvider``. A device profile narrows the list to what that board class can have
(a Raspberry Pi has no CUDA). The choice comes from ``onnxruntime.get_available_providers()``; an
explicit override (``--provider``) wins when available. A provider that is requested but not
available, or that fails to load when the session is made (missing CUDA/TensorRT libraries), costs
one warning and the session runs on the next provider, ending with CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "XnnpackExecutionProvider",
              CPU)
SHORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
               "cuda": "CUDAExecutionProvider", "xnnpack": "XnnpackExecutionProvider", "cpu": CPU}


class ProviderError(ValueError):
    """An override names no onnxruntime execution provider."""


def canonical(name: str) -> str:
    """Return the full provider name for a short one (``cuda`` -> ``CUDAExecutionProvider``).

    Raises
    ------
    ProviderError
        When `name` is neither a short name nor a provider onnxruntime knows.
    """
    full = SHORT_NAMES.get(name.lower(), name)
    if full not in ort.get_all_providers():
        raise ProviderError(f"--provider {name!r}: expected one of {', '.join(SHORT_NAMES)} or a "
                            "full onnxruntime provider name")
    return full


def select_providers(available: Sequence[str], profile_providers: Sequence[str] | None = None,
                     override: str | None = None) -> list[str]:
    """Choose the providers to ask onnxruntime for, best first, always ending with CPU.

    Parameters
    ----------
    available : sequence of str
        ``onnxruntime.get_available_providers()``.
    profile_providers : sequence of str, optional
        Providers the board class can have (``DeviceProfile.onnx_providers``); None: any.
    override : str, optional
        A provider to use first (short or full name). When it is not available, one warning is
        logged and the automatic choice is used.

    Raises
    ------
    ProviderError
        When `override` names no known provider.
    """
    allowed = set(profile_providers) if profile_providers is not None else set(PREFERENCE)
    chosen = [p for p in PREFERENCE if p in available and p in allowed and p != CPU]
    if override is not None:
        wanted = canonical(override)
        if wanted in available:
            chosen = [wanted] if wanted != CPU else []
        else:
            log.warning("execution provider %s is not available in this onnxruntime build "
                        "(available: %s); using %s", wanted, ", ".join(available),
                        (chosen or [CPU])[0])
    return [*chosen, CPU]


def make_session(path: str, options: ort.SessionOptions, providers: Sequence[str]) -> Any:
    """Make an ``InferenceSession`` on the first provider of `providers` that loads.

    A provider that raises while the session is made, or that onnxruntime silently drops, is
    reported with one warning; the session is then made on CPU.
    """
    try:
        with warnings.catch_warnings():  # onnxruntime's own warning would be a second one
            warnings.simplefilter("ignore", UserWarning)
            session = ort.InferenceSession(path, options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own RuntimeError subclasses (Fail, ...)
        if list(providers) == [CPU]:
            raise
        log.warning("execution provider %s failed to load (%s); falling back to %s",
                    providers[0], str(exc).splitlines()[0][:200], CPU)
        return ort.InferenceSession(path, options, providers=[CPU])
    active = session.get_providers()
    if providers and providers[0] not in active:
        log.warning("execution provider %s did not load; running on %s", providers[0],
                    active[0] if active else CPU)
    return session
