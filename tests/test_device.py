"""Device choice, and CUDA against CPU where a GPU exists."""

import pytest
import torch

from intrafusion.core.transport import cost_matrix
from intrafusion.device import resolve_device


def test_auto_follows_cuda_availability():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_device_named():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be checked")
def test_cuda_without_gpu_refused_with_fix():
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: CUDA-vs-CPU cost not comparable")
def test_cost_on_cuda_equals_cpu():
    x = torch.randn(50, 400, generator=torch.Generator().manual_seed(0))
    x = x / x.norm(dim=1, keepdim=True)
    kept = torch.arange(0, 50, 2)
    for p in (1.0, 2.0):
        cpu = cost_matrix(x, x[kept], p, kept=kept)
        gpu = cost_matrix(x.cuda(), x[kept].cuda(), p, kept=kept).cpu()
        torch.testing.assert_close(gpu.double(), cpu.double(), rtol=1e-4, atol=1e-4)


def test_compute_on_nests_and_restores():
    from intrafusion.device import compute_device, compute_on

    assert compute_device() is None  # outside: the cost runs where its features are
    with compute_on("cpu") as dev:
        assert dev == torch.device("cpu") == compute_device()
        with compute_on(None):
            assert compute_device() == torch.device("cpu")
    assert compute_device() is None
    with pytest.raises(ValueError, match="unknown device"), compute_on("tpu"):
        pass
    assert compute_device() is None


def _small():
    from intrafusion.models.zoo import resolve_model

    loaded = resolve_model("vgg11_bn-mnist5k")
    x = torch.randn(40, *loaded.example_inputs.shape[1:], generator=torch.Generator().manual_seed(0))
    return loaded, x, torch.arange(40) % 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: CUDA-vs-CPU results not comparable")
def test_evaluation_and_sweep_on_cuda_equal_cpu():
    from intrafusion.evaluate import evaluate, predict_logits
    from intrafusion.experiments.sweep import sweep

    loaded, x, y = _small()
    cpu = predict_logits(loaded.model, x, device="cpu")
    gpu = predict_logits(loaded.model, x, device="cuda")
    assert gpu.device.type == "cpu" and next(loaded.model.parameters()).device.type == "cpu"  # model not moved
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
    assert evaluate(loaded.model, x, y, device="cuda").accuracy == evaluate(loaded.model, x, y).accuracy
    args = (loaded.model, loaded.example_inputs, x, y, [1], [0.5])
    rows = {d: list(sweep(*args, device=d)) for d in ("cpu", "cuda")}
    for a, b in zip(rows["cpu"], rows["cuda"], strict=True):
        assert (a.group, a.method, a.params) == (b.group, b.method, b.params)
        assert abs(a.logit_distance - b.logit_distance) < 1e-3 and abs(a.accuracy - b.accuracy) <= 100 / len(y)


def test_evaluate_device_cpu_equals_default():
    from intrafusion.evaluate import evaluate

    loaded, x, y = _small()
    a, b = evaluate(loaded.model, x, y), evaluate(loaded.model, x, y, device="cpu")
    assert a.accuracy == b.accuracy and (a.correct == b.correct).all()
    with pytest.raises(ValueError, match="unknown device"):
        evaluate(loaded.model, x, y, device="tpu")


def _train_once(device):
    from intrafusion.experiments.train import train

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    history = train(model, (x, y), (x, y), 20, lr=0.1, batch_size=32, seed=0, device=device)
    return model, history


def test_train_on_cpu_device_equals_default_and_model_stays_home():
    a, ha = _train_once("cpu")
    b, hb = _train_once(None)  # None = auto: the CPU on a machine without CUDA
    if torch.cuda.is_available():
        pytest.skip("auto picks CUDA here: compared within tolerance by the CUDA test")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert [e.test_accuracy for e in ha.epochs] == [e.test_accuracy for e in hb.epochs]
    assert ha.epochs[-1].test_accuracy > 70.0  # it learned: the majority class alone gives 50%
    assert all(p.device.type == "cpu" for p in a.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: CUDA-vs-CPU training not comparable")
def test_train_on_cuda_close_to_cpu_and_returns_model_home():
    a, ha = _train_once("cpu")
    b, hb = _train_once("cuda")
    assert all(p.device.type == "cpu" for p in b.parameters())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-4)
