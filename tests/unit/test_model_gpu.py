"""Which gpu variant a build produces, decided without needing CUDA."""

from __future__ import annotations

import builtins

import pytest
import torch

from model import gpu
from torchserve_backend import tiergate_backends


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


def test_this_host_claims_only_what_it_has():
    cuda = torch.cuda.is_available()
    tensorrt = tiergate_backends.tensorrt_importable()
    expected = "tensorrt-fp16" if cuda and tensorrt else "inductor-cuda" if cuda else "cpu-fp32"
    assert gpu.detect_gpu_build_backend() == expected


def test_a_broken_tensorrt_install_counts_as_none(monkeypatch):
    real_import = builtins.__import__

    def missing_libnvinfer(name, *args, **kwargs):
        if name == "torch_tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", missing_libnvinfer)
    assert tiergate_backends.tensorrt_importable() is False
