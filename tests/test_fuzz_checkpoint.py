"""Fuzz test of the checkpoint loader: seeded mutations of a bundled model file.

Every mutated file must either load a valid model or raise the loader's own :class:`CheckpointError` with a
message: never another exception, never a hang. Mutations: truncations, flipped bytes, altered safetensors JSON
headers (tensor entries and the ``arch_config`` metadata) and altered entries of a ``torch.save`` zip archive.
"""

import io
import json
import random
import signal
import struct
import zipfile

import pytest
import torch

from intrafusion.models.checkpoint import CheckpointError, load_model, read_state_dict
from intrafusion.models.zoo import MODELS_DIR

SOURCE = MODELS_DIR / "mlp-digits8x8.safetensors"
N_EACH = 50  # mutations per kind; 9 kinds
_ODD_VALUES = [0, -1, 1, 7, 2**40, -(2**62), 0.5, 1e308, float("nan"), "", "x", None, True, [], {}, [1, 2], {"a": 1}]


@pytest.fixture(scope="module")
def originals():
    data = SOURCE.read_bytes()
    sd, _ = read_state_dict(data)
    buf = io.BytesIO()
    torch.save({"model_state_dict": sd, "test_accuracy": 97.5, "epoch": 3}, buf)
    return data, buf.getvalue()


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_header(header: dict, body: bytes, rng: random.Random) -> bytes:
    raw = json.dumps(header).encode()
    n = len(raw) + (rng.choice([-3, -1, 1, 5]) if rng.random() < 0.15 else 0)  # sometimes a wrong length
    return struct.pack("<Q", max(n, 0)) + raw + body


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _flip(data: bytes, rng: random.Random, region: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(region or len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _mutate_header(data: bytes, rng: random.Random) -> bytes:
    header, body = _header(data)
    meta = header.get("__metadata__", {})
    names = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(6)
    name = rng.choice(names)
    if kind == 0:
        header[name]["dtype"] = rng.choice(["F16", "F64", "I64", "BOOL", "U8", "BF16", "F8_E4M3", "Q4", 3])
    elif kind == 1:
        header[name]["shape"] = rng.choice([[], [0], [1, 1], [10**12], [-4, 2], ["a"], None,
                                            [d + rng.choice([-1, 1]) for d in header[name]["shape"]]])
    elif kind == 2:
        header[name]["data_offsets"] = rng.choice([[0, 0], [5, 3], [0, 10**15], [-8, 8], None, [1],
                                                   [o + rng.choice([-4, 4]) for o in header[name]["data_offsets"]]])
    elif kind == 3:
        del header[name]
    elif kind == 4:
        return _mutate_arch_config(data, rng)
    else:
        key = rng.choice(list(meta) or ["x"])
        meta[key] = rng.choice(['{"broken', "[]", "null", "1e999", json.dumps({"arch": 3})])
        if rng.random() < 0.3:
            header["__metadata__"] = rng.choice([[], "text", 5, {"a": 1}])
    return _with_header(header, body, rng)


def _mutate_arch_config(data: bytes, rng: random.Random) -> bytes:
    """The config load_model rebuilds the model from: odd values, and sizes that would need terabytes."""
    header, body = _header(data)
    cfg = json.loads(header["__metadata__"]["arch_config"])
    for _ in range(rng.randint(1, 2)):
        cfg[rng.choice(list(cfg) + ["bogus"])] = rng.choice(
            _ODD_VALUES + ["vgg11_bn", "resnet18", "mlp", "torchvision:resnet18", [2**40], [2**31, 3], 10**9, 1e6])
    header["__metadata__"]["arch_config"] = json.dumps(cfg) if rng.random() < 0.9 else json.dumps(cfg)[:-2]
    return _with_header(header, body, rng)


def _mutate_zip(data: bytes, rng: random.Random) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    i = rng.randrange(len(entries))
    pkl = [j for j, (n, _) in enumerate(entries) if n.endswith(".pkl")]
    if pkl and rng.random() < 0.5:
        i = pkl[0]  # the pickle decides what is rebuilt: mutate it more often
    name, payload = entries[i]
    kind = rng.randrange(4)
    if kind == 0 and payload:
        entries[i] = (name, _flip(payload, rng))
    elif kind == 1:
        entries[i] = (name, payload[: rng.randrange(len(payload) + 1)])
    elif kind == 2:
        del entries[i]
    else:
        entries[i] = (name + rng.choice(["x", ".bak", "/"]) if rng.random() < 0.5 else name, payload * 2)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for n, p in entries:
            zf.writestr(n, p)
    return out.getvalue()


def _check_one(blob: bytes) -> tuple[str | None, bool]:
    """(None if the loader behaved -- a valid model or CheckpointError with a message -- else what went wrong,
    whether a model was loaded)."""
    try:
        model, config, _ = load_model(blob)
    except CheckpointError as exc:
        return (None if str(exc).strip() else "CheckpointError without a message"), False
    except Exception as exc:  # noqa: BLE001 - the point of the test: anything else is a loader bug
        return f"{type(exc).__name__}: {exc}"[:300], False
    if not isinstance(model, torch.nn.Module):
        return f"returned {type(model).__name__}", True
    if not all(torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point()):
        return "loaded a model with non-finite weights", True
    return None, True


def _timeout(signum, frame):
    raise TimeoutError("the checkpoint loader hung on a mutated file")


def test_mutated_checkpoints_load_or_raise_checkpoint_error(originals):
    st_bytes, torch_bytes = originals
    header_len = 8 + struct.unpack("<Q", st_bytes[:8])[0]
    kinds = {
        "safetensors truncated": lambda r: _truncate(st_bytes, r),
        "safetensors flipped": lambda r: _flip(st_bytes, r),
        "safetensors header flipped": lambda r: _flip(st_bytes, r, header_len),
        "safetensors header altered": lambda r: _mutate_header(st_bytes, r),
        "safetensors arch_config altered": lambda r: _mutate_arch_config(st_bytes, r),
        "torch truncated": lambda r: _truncate(torch_bytes, r),
        "torch flipped": lambda r: _flip(torch_bytes, r),
        "torch zip entry altered": lambda r: _mutate_zip(torch_bytes, r),
        "torch zip entry altered twice": lambda r: _mutate_zip(_mutate_zip(torch_bytes, r), r),
    }
    failures, loaded = [], 0
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(120)  # a hang guard, not a speed target: the loop takes a few seconds
    try:
        for k, (kind, mutate) in enumerate(kinds.items()):
            for seed in range(N_EACH):
                blob = mutate(random.Random(1000 * k + seed))
                problem, ok = _check_one(blob)
                if problem:
                    failures.append(f"{kind} seed {seed}: {problem}")
                loaded += ok
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not failures, f"{len(failures)} mutated files broke the loader:\n" + "\n".join(failures[:20])
    assert 0 < loaded < len(kinds) * N_EACH  # some mutations are harmless (flips in weights), most are not

