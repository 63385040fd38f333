"""Which gpu variant a build produces, decided without needing CUDA."""

from __future__ import annotations

import pytest
import torch

from model import gpu


@pytest.mark.parametrize(
    "cuda, trt, expected",
    [
        (True, True, "tensorrt-fp16"),
        (True, False, "inductor-cuda"),
        (False, True, "cpu-fp32"),
        (False, False, "cpu-fp32"),
    ],
)
def test_build_backend_follows_host_capabilities(monkeypatch, cuda, trt, expected):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(gpu, "tensorrt_importable", lambda: trt)
    assert gpu.detect_gpu_build_backend() == expected


def test_this_host_never_claims_tensorrt():
    backend = gpu.detect_gpu_build_backend()
    assert backend != "tensorrt-fp16"
    assert backend == ("inductor-cuda" if torch.cuda.is_available() else "cpu-fp32")


def test_tensorrt_is_not_importable_here():
    # torch-tensorrt cannot be installed on the development machines; if that
    # changes, the gpu build path starts compiling engines and this test says so.
    from torchserve_backend.handler import tensorrt_importable

    assert tensorrt_importable() is False
