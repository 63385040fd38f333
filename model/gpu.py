"""The gpu variant: Torch-TensorRT FP16 where the build host can compile it.

Without CUDA and torch_tensorrt the gpu MAR ships the fp32 program only and
the handler falls back at load time (see ``choose_gpu_backend``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from torchserve_backend.tiergate_backends import choose_gpu_backend, tensorrt_importable

__all__ = ["choose_gpu_backend", "detect_gpu_build_backend", "compile_tensorrt_fp16"]


def detect_gpu_build_backend() -> str:
    """What the gpu variant built on this host will be: tensorrt-fp16 only with CUDA and torch_tensorrt."""
    cuda_available = torch.cuda.is_available()
    return choose_gpu_backend(cuda_available, cuda_available and tensorrt_importable())


def compile_tensorrt_fp16(model: torch.nn.Module, example: torch.Tensor, max_batch_size: int, path: Path) -> None:
    """Compile model to a TensorRT FP16 engine with a dynamic batch dimension and save it.

    example is one batch of floating inputs (any rows); the model is cast to half so the
    engine runs FP16 under TensorRT's explicit typing, and the handler feeds it float16 input.
    """
    import torch_tensorrt

    device = torch.device("cuda")
    half_model = copy.deepcopy(model).to(device).half().eval()
    row = tuple(example.shape[1:])
    example = example[:1].repeat((min(2, max_batch_size),) + (1,) * len(row)).to(device).half()
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch_size)},)
    exported = torch.export.export(half_model, (example,), dynamic_shapes=dynamic_shapes)
    compiled = torch_tensorrt.dynamo.compile(
        exported,
        inputs=[
            torch_tensorrt.Input(
                min_shape=(1, *row),
                opt_shape=(max(1, max_batch_size // 2), *row),
                max_shape=(max_batch_size, *row),
                dtype=torch.float16,
            )
        ],
    )
    torch_tensorrt.save(
        compiled,
        str(path),
        output_format="exported_program",
        arg_inputs=[example],
        dynamic_shapes=dynamic_shapes,
        retrace=True,
    )
