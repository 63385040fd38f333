"""Which serialized model a MAR runs on this host, and running it: shared by every model kind.

The MAR carries ``variant.json`` naming its artifacts; the best one the serving host can
run is loaded, and its backend is what ``X-Tiergate-Backend`` reports:

* ``cpu-int8``      PT2E int8 program compiled by AOTInductor (int8 MAR, on a host with the
                    vector ISA it was built for or a wider one; else its fp32 program)
* ``tensorrt-fp16`` Torch-TensorRT ExportedProgram (gpu MAR built where TensorRT ran)
* ``inductor-cuda`` fp32 ExportedProgram under torch.compile (gpu MAR, CUDA without TensorRT)
* ``cpu-fp32``      fp32 ExportedProgram run eagerly (fp32 MAR, or gpu MAR on a host without CUDA)

This module ships in every MAR as a top-level module beside handler.py, so it depends
only on torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BACKEND_HEADER = "X-Tiergate-Backend"
BATCH_SIZE_HEADER = "X-Tiergate-Batch-Size"
BACKEND_TENSORRT_FP16 = "tensorrt-fp16"
BACKEND_INDUCTOR_CUDA = "inductor-cuda"
BACKEND_CPU_FP32 = "cpu-fp32"
BACKEND_CPU_INT8 = "cpu-int8"

VARIANT_FILE = "variant.json"
LABELS_FILE = "index_to_name.json"

# variant.json "artifacts" keys: which serialized model a MAR holds.
ARTIFACT_INT8 = "int8-aoti-package"
ARTIFACT_FP32 = "fp32-exported-program"
ARTIFACT_TENSORRT = "tensorrt-fp16-exported-program"
# variant.json "isa": the vector ISA the int8 package's native code was compiled for.
ISA_FIELD = "isa"
# ATen's CPU capabilities, each running the code of those before it; others must match exactly.
ISA_ORDER = ("DEFAULT", "AVX2", "AVX512")


class InvalidInput(ValueError):
    """A request the client got wrong; answered with HTTP 400, never retried."""


def request_payload(request: Any) -> Any:
    """A request's body: TorchServe passes it as "data" or "body" (JSON already parsed)."""
    if isinstance(request, dict):
        payload = request.get("data")
        return payload if payload is not None else request.get("body")
    return request


def invalid_input_body(message: str) -> dict:
    return {"code": 400, "type": "InvalidInput", "message": message}


def choose_gpu_backend(cuda_available: bool, trt_available: bool) -> str:
    """Backend for the gpu variant: TensorRT only with both CUDA and a TensorRT engine."""
    if cuda_available and trt_available:
        return BACKEND_TENSORRT_FP16
    if cuda_available:
        return BACKEND_INDUCTOR_CUDA
    return BACKEND_CPU_FP32


def tensorrt_importable() -> bool:
    """Importing torch_tensorrt also registers the ops a saved TRT program needs."""
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:  # a broken install (missing libnvinfer) must mean "no TensorRT"
        return False
    return True


def select_backend(variant: dict, cuda_available: bool, trt_importable: bool) -> str:
    """Pick the backend for a MAR's variant.json on a host with the given capabilities."""
    artifacts = variant["artifacts"]
    if ARTIFACT_INT8 in artifacts and int8_runs_here(variant.get(ISA_FIELD)):
        return BACKEND_CPU_INT8
    if variant["variant"] == "gpu":
        has_engine = ARTIFACT_TENSORRT in artifacts and trt_importable
        return choose_gpu_backend(cuda_available, has_engine)
    return BACKEND_CPU_FP32


def int8_runs_here(built_for: str | None, host: str | None = None) -> bool:
    """Whether native code compiled for the ISA built_for runs on this host's CPU."""
    host = host or torch.backends.cpu.get_cpu_capability()
    if built_for in ISA_ORDER and host in ISA_ORDER:
        return ISA_ORDER.index(host) >= ISA_ORDER.index(built_for)
    return host == built_for


@dataclass
class LoadedModel:
    module: Any
    backend: str
    device: torch.device
    input_dtype: torch.dtype  # floating inputs are cast to it (float16 for TensorRT); ids stay integers
    max_batch_size: int

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits on CPU, splitting batches larger than the artifact allows."""
        outputs = []
        with torch.inference_mode():
            for chunk in batch.split(self.max_batch_size):
                if chunk.is_floating_point():
                    chunk = chunk.to(self.device, self.input_dtype)
                else:
                    chunk = chunk.to(self.device)
                outputs.append(self.module(chunk).float().cpu())
        return torch.cat(outputs)


def load_model(
    model_dir: Path,
    variant: dict,
    cuda_available: bool | None = None,
    trt_importable: bool | None = None,
    gpu_id: int | None = None,
) -> LoadedModel:
    """Load the artifact matching the backend this host supports."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if trt_importable is None:
        trt_importable = ARTIFACT_TENSORRT in variant["artifacts"] and tensorrt_importable()
    backend = select_backend(variant, cuda_available, trt_importable)
    artifacts = {name: Path(model_dir) / file for name, file in variant["artifacts"].items()}
    max_batch_size = int(variant["max_batch_size"])
    cpu = torch.device("cpu")
    cuda = torch.device("cuda", gpu_id or 0)

    if backend == BACKEND_CPU_INT8:
        module = torch._inductor.aoti_load_package(str(artifacts[ARTIFACT_INT8]))
        return LoadedModel(module, backend, cpu, torch.float32, max_batch_size)
    if ARTIFACT_INT8 in artifacts:
        logger.warning(
            "int8 package built for %s does not run on this %s CPU; serving its fp32 program (%s)",
            variant.get(ISA_FIELD), torch.backends.cpu.get_cpu_capability(), BACKEND_CPU_FP32,
        )
    if backend == BACKEND_TENSORRT_FP16:
        try:
            module = load_tensorrt(artifacts[ARTIFACT_TENSORRT], cuda)
            return LoadedModel(module, backend, cuda, torch.float16, max_batch_size)
        except Exception:
            # An engine is tied to the GPU model and TensorRT version it was built for; one
            # that does not load here must not take the pool down. The MAR also carries the
            # fp32 program: compile that instead, and report what runs.
            logger.exception("TensorRT engine did not load; serving with %s", BACKEND_INDUCTOR_CUDA)
            backend = BACKEND_INDUCTOR_CUDA
    module = torch.export.load(str(artifacts[ARTIFACT_FP32])).module()
    if backend == BACKEND_INDUCTOR_CUDA:
        return LoadedModel(compile_for_cuda(module, cuda), backend, cuda, torch.float32, max_batch_size)
    return LoadedModel(module, backend, cpu, torch.float32, max_batch_size)


def load_tensorrt(path: Path, device: torch.device) -> Any:
    import torch_tensorrt

    return torch_tensorrt.load(str(path)).module().to(device)


def compile_for_cuda(module: Any, device: torch.device) -> Any:
    return torch.compile(module.to(device), dynamic=True)
