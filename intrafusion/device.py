"""Where tensors run: ``--device auto|cpu|cuda``.

``auto`` picks CUDA when torch sees a GPU, else the CPU. Asking for ``cuda`` on a machine without one is an
error naming the fix, not a silent fall back, so a benchmark never reports CPU numbers as GPU ones.

The cost matrix of Intra-Fusion is computed on the *compute device* (set by a caller with :func:`compute_on`;
otherwise where the features are); evaluation takes a ``device`` argument; weights are updated where they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DEVICES = ("auto", "cpu", "cuda")

__all__ = ["DEVICES", "compute_device", "compute_on", "model_device", "resolve_device"]

_COMPUTE: list[torch.device | None] = [None]  # stack: the innermost compute_on wins; None = where the data is


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


def compute_device() -> torch.device | None:
    """The device transport costs are computed on inside :func:`compute_on`; None (outside): where the data is."""
    return _COMPUTE[-1]


@contextmanager
def compute_on(device: str | torch.device | None) -> Iterator[torch.device]:
    """Compute transport costs on ``device`` inside the ``with`` block (None: leave the setting as it is)."""
    if device is None:
        yield compute_device()
        return
    _COMPUTE.append(resolve_device(device))
    try:
        yield _COMPUTE[-1]
    finally:
        _COMPUTE.pop()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
