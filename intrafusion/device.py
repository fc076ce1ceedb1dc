"""Where tensors run: ``--device auto|cpu|cuda``.

``auto`` picks CUDA when torch sees a GPU, else the CPU. Asking for ``cuda`` on a machine without one is an
error naming the fix, not a silent fall back, so a benchmark never reports CPU numbers as GPU ones.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")

__all__ = ["DEVICES", "resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device`` (one of ``DEVICES``, a ``torch.device``, or None meaning ``auto``)."""
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = "auto" if device is None else str(device).split(":")[0]
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU here: use --device cpu or auto")
    return torch.device(device) if name == "cuda" else torch.device("cpu")
