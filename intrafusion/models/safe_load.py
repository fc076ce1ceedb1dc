"""Reading checkpoint weights safely: bytes in, a checked state dict out.

Only two formats are read:

* **safetensors** -- plain tensors plus a string header, nothing executable;
* **torch files** (``torch.save``) -- loaded *only* with
  ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that
  refuses to import or call anything that is not a tensor or a plain container.

A pickle that would run code on loading is refused with a :class:`CheckpointError`
before anything in it executes (a static scan of the pickle names what it asks to import).
Accepted layouts: a raw state dict; the Intra-Fusion paper's ``{"model_state_dict", "test_accuracy", "epoch"}``;
``{"state_dict": ...}``; kuangliu's ``{"net", "acc", "epoch"}``; keys prefixed
with ``module.`` (``DataParallel``) or ``_orig_mod.`` (``torch.compile``). The weights must be finite and every
BatchNorm variance non-negative. Building a model from them is :mod:`intrafusion.models.checkpoint`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import load as _st_load

__all__ = ["CheckpointError", "Source", "read_state_dict"]

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

#: Keys under which a checkpoint dict may keep the model weights, in order of preference.
_STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "net")
#: Prefixes added by wrappers (DataParallel / DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8
_SAVE_HINT = "save the weights with safetensors or torch.save(model.state_dict())"


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model.

    The message names the problem and how to fix it.
    """


def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... and {len(items) - limit} more"
    return shown


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _read_source(source: Source) -> tuple[bytes, str]:
    """Return the raw bytes of ``source`` and a name (for the extension hint)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes(), path.name
        except FileNotFoundError:
            raise CheckpointError(f"no such checkpoint file: {path}") from None
        except IsADirectoryError:
            raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if hasattr(source, "getvalue"):  # BytesIO, Streamlit's UploadedFile
        data = source.getvalue()
    elif hasattr(source, "read"):
        data = source.read()
    else:
        raise TypeError(
            f"expected a path, bytes or a binary file object, got {type(source).__name__}"
        )
    if isinstance(data, str):
        raise CheckpointError("the file object returned text; open the checkpoint in binary mode ('rb')")
    return bytes(data), str(getattr(source, "name", "") or "")


def _safetensors_header(data: bytes) -> dict | None:
    """Parse the safetensors JSON header, or return None if ``data`` is not safetensors."""
    if len(data) < 10:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > len(data) - 8 or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 / JSON, an int of > 4300 digits, nesting too deep
        return None
    return header if isinstance(header, dict) else None


def _decode_metadata(raw: Mapping) -> dict:
    out = {}
    for key, value in raw.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # a plain string, not JSON
                pass
        out[key] = value
    return out


def _read_safetensors(data: bytes, header: dict) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        tensors = _st_load(data)
    except Exception as exc:  # SafetensorError and friends
        raise CheckpointError(
            f"not a readable safetensors/torch checkpoint: the safetensors file is truncated or "
            f"corrupt ({exc}); download or export it again"
        ) from None
    metadata = _decode_metadata(header.get("__metadata__") or {})
    return dict(tensors), metadata


def _numpy_safe_globals() -> list:
    """Numpy scalar reconstruction (e.g. ``np.float64`` accuracies in checkpoint dicts).

    These only rebuild numbers from bytes; they cannot import or call anything else.
    """
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}  # numeric dtypes only
    return [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *sorted(dtype_classes, key=lambda c: c.__name__),
    ]


def _pickle_bytes(data: bytes) -> list[bytes]:
    """The pickle streams inside a torch file (zip archive or legacy format), best effort."""
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return [
                    zf.read(info)
                    for info in zf.infolist()
                    if info.filename.endswith(".pkl") and info.file_size < 64 * 2**20
                ]
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, zlib.error, EOFError, NotImplementedError):
            return []
    return [data]


_ALLOWED_MODULE_PREFIXES = ("torch.", "collections.", "_codecs.", "numpy.")


def _suspicious_globals(data: bytes) -> list[str]:
    """Names the pickle would import (static scan, nothing is executed)."""
    found: list[str] = []
    for stream in _pickle_bytes(data):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # truncated / not a pickle: keep what was found
            pass
    return [g for g in found if not g.startswith(_ALLOWED_MODULE_PREFIXES)]


def _refused(names: list[str]) -> CheckpointError:
    what = f" (it asks to import {_listing(sorted(set(names)), 4)})" if names else ""
    return CheckpointError(
        f"refused: this file is a pickle that would run code when loaded{what}, so it was not loaded. "
        "Only plain weights are accepted (a whole pickled model object is refused too); "
        f"{_SAVE_HINT}."
    )


def _torch_load(data: bytes) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        blocked = re.findall(r"GLOBAL\s+([\w.]+)", msg)
        if blocked:
            raise _refused(blocked) from None
        suspicious = _suspicious_globals(data)
        if suspicious:
            raise _refused(suspicious) from None
        reason = "corrupt or not a checkpoint"
    except Exception as exc:  # noqa: BLE001 - any failure of torch.load on these bytes means a corrupt file
        # (seen: RuntimeError, EOFError, KeyError, ValueError, struct.error, UnicodeDecodeError, zlib.error)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    raise CheckpointError(
        f"not a readable safetensors/torch checkpoint ({reason}); the file may be truncated or "
        f"corrupt. Re-export it: {_SAVE_HINT}."
    )


def _scalar(value: Any) -> Any:
    """JSON-friendly version of a top-level checkpoint entry, or None to drop it."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], dict]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"the checkpoint holds a {type(obj).__name__}, not a state dict; {_SAVE_HINT}"
        )
    if _is_state_dict(obj):
        return dict(obj), {}
    for key in _STATE_DICT_KEYS:
        if key in obj and _is_state_dict(obj[key]):
            metadata: dict = {}
            for k, v in obj.items():
                if k == key or not isinstance(k, str):
                    continue
                s = _scalar(v)
                if s is not None:
                    metadata[k] = s
            metadata["state_dict_key"] = key
            return dict(obj[key]), metadata
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    raise CheckpointError(
        "no model weights found in the checkpoint: expected a state dict (name -> tensor) or a dict "
        f"with one under {', '.join(repr(k) for k in _STATE_DICT_KEYS)}; "
        f"found non-tensor entries {_listing(bad)}. {_SAVE_HINT[0].upper() + _SAVE_HINT[1:]}."
    )


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _check_finite(sd: Mapping[str, torch.Tensor]) -> None:
    bad = []
    for name, t in sd.items():
        if t.is_floating_point() or t.is_complex():
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                bad.append(f"{name} ({n_bad} of {t.numel()} values)")
    if bad:
        raise CheckpointError(
            f"the checkpoint has non-finite (NaN/inf) weights in {len(bad)} tensor(s): {_listing(bad)}. "
            "It is corrupt or its training diverged; export it again from a healthy run."
        )


def _check_batchnorm(sd: Mapping[str, torch.Tensor]) -> None:
    """A BatchNorm variance below zero has no square root: folding would turn the layer into NaN."""
    bad = []
    for name, t in sd.items():
        if name.endswith("running_var") and t.is_floating_point():
            n_neg = int((t < 0).sum())
            if n_neg:
                bad.append(f"{name} ({n_neg} of {t.numel()} values, min {float(t.min()):.3g})")
    if bad:
        raise CheckpointError(
            f"the checkpoint has negative BatchNorm variances in {_listing(bad)}: a variance cannot be "
            "below zero, so the file is corrupt or was edited; export it again from the trained model."
        )


def _looks_like_pickle(data: bytes) -> bool:
    """A torch zip archive, or a pickle stream (protocol 2 or later starts with PROTO)."""
    return data[:4] == b"PK\x03\x04" or (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def read_state_dict(source: Source) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a state dict and its metadata from a safetensors or torch checkpoint.

    Parameters
    ----------
    source : path, bytes or binary file object
        The checkpoint. Safetensors is recognised by its header; anything else
        (also a pickle named ``.safetensors``) is read with
        ``torch.load(weights_only=True)``.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        CPU tensors, with ``module.``/``_orig_mod.`` prefixes removed.
    metadata : dict
        For safetensors the header's ``__metadata__`` (values JSON-decoded where
        possible, so ``arch_config`` is a dict); for torch dict checkpoints the
        scalar entries next to the weights (e.g. ``test_accuracy``, ``epoch``)
        and ``state_dict_key``.

    Raises
    ------
    CheckpointError
        If the file is a pickle that would run code ("refused: ..."), is corrupt,
        truncated or not a checkpoint, holds no state dict, has NaN/inf weights or a
        negative BatchNorm ``running_var``.
    """
    data, name = _read_source(source)
    if not data:
        raise CheckpointError("the checkpoint file is empty")
    header = _safetensors_header(data)
    if header is not None:
        sd, metadata = _read_safetensors(data, header)
    elif name.lower().endswith(".safetensors") and not _looks_like_pickle(data):
        raise CheckpointError(
            "not a readable safetensors/torch checkpoint: the safetensors header is truncated or "
            "corrupt; download or export the file again"
        )
    else:
        sd, metadata = _extract_state_dict(_torch_load(data))
    if not sd:
        raise CheckpointError("the checkpoint contains no tensors")
    sd = _strip_prefixes(sd)
    _check_finite(sd)
    _check_batchnorm(sd)
    return sd, metadata
