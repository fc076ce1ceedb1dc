"""Channel widths shared by the CIFAR networks: the width multiplier and explicit (pruned) channel lists."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["scale_channels"]

def scale_channels(channels: int, width: float) -> int:
    """Scale a channel count by a width multiplier.

    Parameters
    ----------
    channels : int
        Channel count at width 1.0.
    width : float
        Width multiplier.

    Returns
    -------
    int
        ``max(1, int(round(channels * width)))``.
    """
    return max(1, int(round(channels * width)))


def _check_channels(channels: Sequence[int] | None, expected_len: int, what: str) -> list[int] | None:
    if channels is None:
        return None
    channels = [int(c) for c in channels]
    if len(channels) != expected_len:
        raise ValueError(f"{what} needs {expected_len} channel counts, got {len(channels)}: {channels}")
    if any(c < 1 for c in channels):
        raise ValueError(f"{what}: channel counts must be >= 1, got {channels}")
    return channels
