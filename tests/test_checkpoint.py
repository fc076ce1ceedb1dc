"""Tests for intrafusion.models.checkpoint: safe reading, the paper's format, mismatches, round trips."""

import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from intrafusion.models.architectures import VGG, ArchConfig, ResNet18, build_model
from intrafusion.models.checkpoint import (
    CheckpointError,
    load_into,
    load_model,
    model_to_bytes,
    read_state_dict,
    save_model,
    sha256_file,
)

torch.set_num_threads(2)

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BN buffers non-default values so that a load that skipped them would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _model(cfg: ArchConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(build_model(cfg), seed)


@pytest.fixture(scope="module")
def small_vgg():
    cfg = ArchConfig("vgg11_bn", width=0.25)
    return _model(cfg), cfg


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "cfg,x",
    [
        (ArchConfig("vgg11_bn", width=0.25, num_classes=7), X),
        (ArchConfig("resnet18", width=0.125, num_classes=100, in_channels=1), X[:, :1]),
        (ArchConfig("mlp", hidden=(12, 8), in_features=20, batchnorm=True), torch.randn(4, 20)),
    ],
)
def test_save_load_round_trip(tmp_path, cfg, x):
    model = _model(cfg)
    path = save_model(model, cfg, tmp_path / "sub" / "m.safetensors", metadata={"test_accuracy": 0.875})
    assert path.exists() and not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    loaded, got_cfg, meta = load_model(path)
    assert got_cfg == cfg  # from the header, not inferred
    assert meta["arch_config"] == cfg.to_dict()
    assert meta["test_accuracy"] == 0.875
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the same bytes through the in-memory paths the app uses
    data = model_to_bytes(model, cfg, {"test_accuracy": 0.875})
    for src in (data, io.BytesIO(data), bytearray(data)):
        again, cfg2, _ = load_model(src)
        assert cfg2 == cfg
        with torch.no_grad():
            assert torch.equal(again(x), model(x))


def test_header_metadata_is_json(tmp_path, small_vgg):
    model, cfg = small_vgg
    path = save_model(model, cfg, tmp_path / "m.safetensors", {"note": "hello", "sparsity": [0.3, 0.5]})
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + n])["__metadata__"]
    assert json.loads(header["arch_config"])["width"] == 0.25
    assert all(isinstance(v, str) for v in header.values())
    _, meta = read_state_dict(path)
    assert meta["note"] == "hello" and meta["sparsity"] == [0.3, 0.5]
    with pytest.raises(ValueError, match="reserved"):
        model_to_bytes(model, cfg, {"arch_config": "x"})


def test_infer_when_no_config_in_file(tmp_path, small_vgg):
    model, cfg = small_vgg
    path = tmp_path / "plain.safetensors"
    path.write_bytes(st_save({k: v.contiguous() for k, v in model.state_dict().items()}))
    loaded, got, meta = load_model(path)
    assert got == cfg and "arch_config" not in meta
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_pruned_model_saves_config_with_explicit_channels(tmp_path):
    channels = (10, 20, 30, 25, 60, 50, 40, 33)
    model = _randomise_bn(VGG(channels=channels))
    # caller passes the config of the unpruned model: the stored config must describe the real shapes
    path = save_model(model, ArchConfig("vgg11_bn", width=0.25), tmp_path / "pruned.safetensors")
    loaded, cfg, _ = load_model(path)
    assert cfg.channels == channels
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"intra-fusion" * 1000)
    assert sha256_file(p) == hashlib.sha256(b"intra-fusion" * 1000).hexdigest()


# ----------------------------------------------------------------------------- foreign torch formats


def test_paper_released_format(tmp_path, small_vgg):
    model, cfg = small_vgg
    path = tmp_path / "vgg11_bn.checkpoint"
    torch.save({"model_state_dict": model.state_dict(), "test_accuracy": 90.23, "epoch": 300}, path)
    loaded, got, meta = load_model(path)
    assert got == cfg
    assert meta["test_accuracy"] == 90.23 and meta["epoch"] == 300
    assert meta["state_dict_key"] == "model_state_dict"
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_paper_resnet18_with_conv_biases(tmp_path):
    paper = _randomise_bn(ResNet18(width=0.125, conv_bias=True))
    path = tmp_path / "resnet18.checkpoint"
    torch.save({"model_state_dict": paper.state_dict(), "test_accuracy": 0.9, "epoch": 10}, path)
    loaded, cfg, _ = load_model(path)
    assert cfg.conv_bias is True and cfg.width == 0.125
    with torch.no_grad():
        assert torch.equal(loaded(X), paper(X))
    # loading it into the kuangliu (bias-free) layout explains what to change
    with pytest.raises(CheckpointError, match="conv_bias=True"):
        load_model(path, config=ArchConfig("resnet18", width=0.125))


def test_dataparallel_prefix_and_other_wrappers(tmp_path, small_vgg):
    model, cfg = small_vgg
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    for i, obj in enumerate([sd, {"state_dict": sd}, {"net": sd, "acc": 91.5, "epoch": 199}]):
        path = tmp_path / f"c{i}.pth"
        torch.save(obj, path)
        loaded, got, meta = load_model(path, arch="vgg11_bn")
        assert got == cfg
        with torch.no_grad():
            assert torch.equal(loaded(X), model(X))
    assert meta["acc"] == 91.5


def test_numpy_scalars_and_tensor_accuracy_in_metadata(tmp_path, small_vgg):
    model, _ = small_vgg
    path = tmp_path / "np.pt"
    torch.save(
        {"model_state_dict": model.state_dict(), "test_accuracy": np.float64(0.9023),
         "epoch": np.int64(300), "best": torch.tensor(0.5), "optimizer": {"lr": 0.1}},
        path,
    )
    _, meta = read_state_dict(path)
    assert meta["test_accuracy"] == pytest.approx(0.9023) and meta["epoch"] == 300
    assert meta["best"] == 0.5 and "optimizer" not in meta


def test_missing_num_batches_tracked_is_tolerated(small_vgg):
    model, cfg = small_vgg
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = build_model(cfg).eval()
    load_into(fresh, sd)
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))


# ----------------------------------------------------------------------------- mismatches


def test_mismatch_message_lists_missing_unexpected_and_shapes(small_vgg):
    model, _ = small_vgg
    sd = dict(model.state_dict())
    del sd["features.4.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["classifier.weight"] = torch.zeros(100, 128)
    target = build_model(ArchConfig("vgg11_bn", width=0.25))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_into(target, sd)
    msg = str(info.value)
    assert "missing key(s): features.4.bias" in msg
    assert "unexpected key(s): extra.weight" in msg
    assert "classifier.weight: checkpoint (100, 128) vs model (10, 128)" in msg
    assert "width" in msg and "number of classes" in msg  # the fix
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


def test_mismatch_message_is_truncated():
    sd = ResNet18(width=0.125).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_into(VGG(width=0.125), sd)
    msg = str(info.value)
    assert "more" in msg and len(msg) < 2500


def test_wrong_config_gives_checkpoint_error(tmp_path, small_vgg):
    model, cfg = small_vgg
    path = save_model(model, cfg, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(path, config=ArchConfig("vgg11_bn", width=0.5))
    with pytest.raises(CheckpointError, match="cannot work out the architecture"):
        load_model(path, arch="resnet18")


# ----------------------------------------------------------------------------- malicious and broken files


def _make_marker(path):
    Path(path).write_text("code ran")
    return {}


class _Payload:
    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "function":
            return (_make_marker, (self.marker,))
        return (open, (self.marker, "w"))  # builtins.open: creates the file when unpickled


@pytest.mark.parametrize("how", ["function", "builtin"])
@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_code_executing_pickle_is_refused(tmp_path, small_vgg, how, writer):
    marker = tmp_path / "marker.txt"
    payload = {"model_state_dict": small_vgg[0].state_dict(), "evil": _Payload(marker, how)}
    path = tmp_path / "evil.pt"
    if writer == "torch_zip":
        torch.save(payload, path)
    elif writer == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker, how), protocol=4))

    # the payload is live: an unsafe loader would create the marker
    probe = tmp_path / "probe.txt"
    pickle.loads(pickle.dumps(_Payload(probe, how)))
    assert probe.exists()

    for src in (path, path.read_bytes()):
        with pytest.raises(CheckpointError, match="refused") as info:
            load_model(src)
        assert "safetensors" in str(info.value)
    assert not marker.exists()


def test_pickled_whole_model_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(VGG(width=0.125), path)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    for i, blob in enumerate([rng.bytes(4096), b"hello world", b"PK\x03\x04" + rng.bytes(300)]):
        path = tmp_path / f"junk{i}.pt"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match="not a readable safetensors/torch checkpoint"):
            read_state_dict(path)
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(b"")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_truncated_files(tmp_path, small_vgg):
    model, cfg = small_vgg
    data = model_to_bytes(model, cfg)
    for cut in (len(data) - 100, 200, 20):
        with pytest.raises(CheckpointError, match="not a readable safetensors/torch checkpoint"):
            read_state_dict(data[:cut])
    named = tmp_path / "cut.safetensors"
    named.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="safetensors header is truncated"):
        read_state_dict(named)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    with pytest.raises(CheckpointError, match="not a readable"):
        read_state_dict(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_torch_file_without_weights(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(path)
    torch.save({"epoch": 3, "notes": "x"}, path)
    with pytest.raises(CheckpointError, match="no model weights found"):
        read_state_dict(path)


def test_nan_weights_are_named(tmp_path, small_vgg):
    model, cfg = small_vgg
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["features.8.weight"][0, 0, 0, 0] = float("nan")
    sd["classifier.bias"][1] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save({"model_state_dict": sd, "test_accuracy": 0.1, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "features.8.weight (1 of" in msg and "classifier.bias (1 of 10 values)" in msg
    assert "features.0.weight" not in msg
    with pytest.raises(CheckpointError, match="features.8.weight"):
        read_state_dict(st_save({k: v.contiguous() for k, v in sd.items()}))


def test_zip_helper_does_not_mask_real_zip_errors(tmp_path):
    # a well-formed zip that is not a torch archive is "not readable", not "refused"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_state_dict(buf.getvalue())
    assert os.listdir(tmp_path) == []
