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
