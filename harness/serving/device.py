"""What the device is and can do: its name as records state it, and whether its kernels
can launch as programmatic dependents."""

from __future__ import annotations

import platform

import torch


def device_name(device: torch.device) -> str:
    """The GPU's model ("NVIDIA H100 80GB HBM3"), or the CPU's architecture: where a speed was measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def programmatic_launch(device: torch.device) -> bool:
    """Whether kernels on ``device`` can launch as programmatic dependents (NVIDIA Hopper and
    newer; ROCm reports capabilities ≥ 9 too, but has no ``griddepcontrol``)."""
    return device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device) >= (9, 0)
