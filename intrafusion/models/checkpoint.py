"""Model checkpoints: rebuild a model from a file, and write one safely.

Reading the weights (safetensors, or ``torch.load(weights_only=True)`` with pickles that would run code refused)
is :mod:`intrafusion.models.safe_load`; :func:`read_state_dict` and :class:`CheckpointError` are re-exported here.
Models are written as safetensors with the :class:`~intrafusion.models.architectures.ArchConfig`
in the header (``arch_config``) so that :func:`load_model` can rebuild them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save as _st_save
from torch import nn

from .architectures import ArchConfig, build_model, infer_config
from .safe_load import CheckpointError, Source, _fmt_shape, _listing, read_state_dict

__all__ = [
    "CheckpointError",
    "load_into",
    "load_model",
    "model_to_bytes",
    "read_state_dict",
    "save_model",
    "sha256_file",
    "write_atomic",
]


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, with a readable error on mismatch.

    Missing ``num_batches_tracked`` buffers (older checkpoints) are tolerated.

    Parameters
    ----------
    model : torch.nn.Module
    state_dict : mapping of str to torch.Tensor

    Returns
    -------
    torch.nn.Module
        ``model``, with the weights loaded.

    Raises
    ------
    CheckpointError
        Listing missing keys, unexpected keys and shape mismatches
        (``name: checkpoint (a, b) vs model (c, d)``) and how to fix it.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    for key, value in own.items():
        if key not in sd and key.endswith("num_batches_tracked"):
            sd[key] = value.clone()
    _check_shapes(model, own, sd)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint does not fit the model: {exc}") from None
    return model


def _check_shapes(model: nn.Module, own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> None:
    """CheckpointError listing missing / unexpected keys and shape mismatches between ``sd`` and ``own``."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: checkpoint {_fmt_shape(sd[k].shape)} vs model {_fmt_shape(own[k].shape)}"
        for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched, 6)}")
        hint = ""
        conv_bias = re.compile(r"(^|\.)(conv\d|shortcut\.0)\.bias$")
        if any(conv_bias.search(k) for k in unexpected):
            hint = (
                " The checkpoint has conv biases (like the Intra-Fusion paper's ResNet18): "
                "use conv_bias=True."
            )
        elif any(conv_bias.search(k) for k in missing):
            hint = " The checkpoint has no conv biases: use conv_bias=False."
        raise CheckpointError(
            f"the checkpoint does not fit the {type(model).__name__} model: " + "; ".join(parts) + ". "
            "Pick the architecture, width, number of classes and input channels the checkpoint was "
            "trained with, or let load_model infer them (config=None)." + hint
        )


def load_model(
    source: Source,
    config: ArchConfig | None = None,
    arch: str | None = None,
) -> tuple[nn.Module, ArchConfig, dict]:
    """Read a checkpoint, rebuild its model and load the weights.

    Parameters
    ----------
    source : path, bytes or binary file object
        A safetensors or torch checkpoint (see :func:`read_state_dict`).
    config : ArchConfig, optional
        The architecture. If omitted it is taken from the ``arch_config`` that
        :func:`save_model` writes, else inferred from the tensor shapes.
    arch : str, optional
        Architecture name to use when inferring (guessed from the keys if omitted).

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on the CPU.
    config : ArchConfig
    metadata : dict
        See :func:`read_state_dict`.

    Raises
    ------
    CheckpointError
        If the file cannot be read safely or does not fit the architecture.
    """
    state_dict, metadata = read_state_dict(source)
    if config is None:
        stored = metadata.get("arch_config")
        if isinstance(stored, Mapping) and (arch is None or stored.get("arch") == arch):
            try:
                config = ArchConfig.from_dict(stored)
            except (ValueError, TypeError, OverflowError) as exc:
                raise CheckpointError(
                    f"the checkpoint's arch_config is invalid ({exc}); pass config=ArchConfig(...)"
                ) from None
        else:
            try:
                config = infer_config(state_dict, arch)
            except ValueError as exc:
                raise CheckpointError(
                    f"cannot work out the architecture from the checkpoint: {exc}. "
                    "Pass arch= or config=ArchConfig(...) that matches it."
                ) from None
    try:
        # Shapes first, on the meta device: a config that does not fit (or asks for a huge model) allocates nothing
        with torch.device("meta"):
            ghost = build_model(config)
        own = ghost.state_dict()
        _check_shapes(ghost, own, {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")},
                                   **state_dict})
        model = build_model(config)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"cannot build the model {config}: {str(exc)[:300]}") from None
    load_into(model, state_dict)
    model.eval()
    return model, config, metadata


def _config_for(model: nn.Module, config: ArchConfig, sd: Mapping[str, torch.Tensor]) -> ArchConfig:
    """``config`` if it rebuilds ``model``'s shapes, else one inferred from them (e.g. after pruning)."""
    with torch.device("meta"):
        ref = build_model(config).state_dict()
    if ref.keys() == sd.keys() and all(ref[k].shape == sd[k].shape for k in ref):
        return config
    try:
        inferred = infer_config(sd, config.arch)
        with torch.device("meta"):
            ref = build_model(inferred).state_dict()
    except ValueError as exc:
        raise ValueError(
            f"the model does not match {config} and its shapes cannot be described: {exc}"
        ) from None
    if ref.keys() == sd.keys() and all(ref[k].shape == sd[k].shape for k in ref):
        return inferred
    raise ValueError(
        f"the model's weights do not match the {config.arch} layout, so it could not be rebuilt when loaded"
    )


def model_to_bytes(model: nn.Module, config: ArchConfig, metadata: Mapping | None = None) -> bytes:
    """Serialise ``model`` to safetensors bytes (e.g. for a download button).

    Parameters
    ----------
    model : torch.nn.Module
    config : ArchConfig
        Its architecture. If the model's shapes differ (a pruned model), the
        config stored is the one inferred from the shapes, with explicit channels.
    metadata : mapping, optional
        Extra JSON-serialisable entries for the header (stored as JSON strings).

    Returns
    -------
    bytes
    """
    sd = model.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    stored_config = _config_for(model, config, tensors)
    header = {"format": "pt", "arch_config": json.dumps(stored_config.to_dict())}
    for key, value in (metadata or {}).items():
        key = str(key)
        if key in header:
            raise ValueError(f"metadata key {key!r} is reserved")
        try:
            header[key] = json.dumps(value)
        except TypeError as exc:
            raise ValueError(f"metadata {key!r} is not JSON-serialisable: {exc}") from None
    return _st_save(tensors, metadata=header)


def save_model(
    model: nn.Module,
    config: ArchConfig,
    path: str | os.PathLike,
    metadata: Mapping | None = None,
) -> Path:
    """Write ``model`` as a safetensors file with its config in the header.

    The file is written atomically (temporary file, then rename).

    Parameters
    ----------
    model : torch.nn.Module
    config : ArchConfig
    path : str or path-like
    metadata : mapping, optional
        Extra JSON-serialisable header entries (e.g. accuracy, sparsity).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    write_atomic(path, model_to_bytes(model, config, metadata))
    return path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; weights and manifests are not secrets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
