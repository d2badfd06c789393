"""Turning a device name into a torch device, with one clear error."""

from __future__ import annotations

import torch

from .errors import EdgeAnchorError
from .io import plural


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device that exists here.

    Raises:
        EdgeAnchorError: not a device name, or a CUDA device this machine does not have.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise EdgeAnchorError(f"device {name!r} is not a device name; use `device` cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise EdgeAnchorError(f"device {name!r} is not supported; use `device` cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EdgeAnchorError(f"device {name} was asked for but no CUDA GPU is available; use `device` cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EdgeAnchorError(f"device {name}: this machine has "
                                  f"{plural(torch.cuda.device_count(), 'CUDA device')}")
    return device
