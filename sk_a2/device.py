"""The ``device`` parameter: what it accepts, what it resolves to, and unpickling without CUDA."""

from __future__ import annotations

import re
import warnings

import torch

from ._param_validation import Rule

__all__ = ["DEVICE", "cpu_fallback", "resolve_device"]

_DEVICE_TYPES = ("cpu", "cuda", "mps")
_DEVICE_RE = re.compile(r"(auto|cpu|cuda(:\d+)?|mps(:0)?)")


def _is_device(value) -> bool:
    if isinstance(value, torch.device):
        return value.type in _DEVICE_TYPES
    return isinstance(value, str) and _DEVICE_RE.fullmatch(value) is not None


#: The ``device`` rule shared by every estimator that runs a model.
DEVICE = Rule(_is_device, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _available(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "mps":
        return torch.backends.mps.is_available()
    return True


def resolve_device(device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` as named.

    Raises
    ------
    ValueError
        For another value, or for a device this machine does not have; the message names
        ``device``.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _is_device(device):
        raise ValueError(f"device must be {DEVICE}, got {device!r}")
    dev = torch.device(device)
    if not _available(dev.type):
        raise ValueError(
            f"device={device!r} was requested but {dev.type.upper()} is not available here"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return dev


def cpu_fallback(device, owner: str):
    """``device`` to use after unpickling: ``"cpu"``, with a warning, when it names a device type
    this machine lacks (an estimator pickled where CUDA was available), else ``device``."""
    if not _is_device(device) or (isinstance(device, str) and device == "auto"):
        return device
    device_type = torch.device(device).type
    if _available(device_type):
        return device
    warnings.warn(
        f"{owner} was saved with device={device!r} but {device_type.upper()} is not available "
        "here; it runs on device='cpu' instead.",
        UserWarning,
        stacklevel=3,
    )
    return "cpu"
