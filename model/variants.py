"""The fp32 / int8 / gpu variants every tiergate-handler recipe ships, as MARs.

A variant is a variant.json (what the handler reads: kind, artifacts, batch limit) plus
the serialized models it names, archived as <name>-<variant>.mar:

    fp32  the fp32 ExportedProgram                              -> cpu-fp32
    int8  the int8 AOTInductor package, and the fp32 program for
          a host whose CPU lacks the package's vector ISA      -> cpu-int8 / cpu-fp32
    gpu   the fp32 program, plus a TensorRT FP16 program when
          the recipe compiled one                               -> tensorrt-fp16 / inductor-cuda / cpu-fp32
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from model.archive import archive_tiergate_mar
from model.quantize import cpu_isa
from torchserve_backend import tiergate_backends as backends

VARIANTS = ("fp32", "int8", "gpu")


def variant_specs(name: str, kind: str, max_batch_size: int, files: dict[str, str], gpu_artifacts: list[str], **kind_fields) -> dict[str, dict]:
    """variant.json of each variant; files maps artifact keys to file names in the work dir."""
    variant_artifacts = {
        "fp32": [backends.ARTIFACT_FP32],
        "int8": [backends.ARTIFACT_INT8, backends.ARTIFACT_FP32],
        "gpu": gpu_artifacts,
    }
    return {
        variant: {
            "arch": name,
            "kind": kind,
            "variant": variant,
            "max_batch_size": max_batch_size,
            "artifacts": {artifact: files[artifact] for artifact in artifacts},
            **kind_fields,
            **({backends.ISA_FIELD: cpu_isa()} if variant == "int8" else {}),
        }
        for variant, artifacts in variant_artifacts.items()
    }


def load_variants(work_dir: Path, specs: dict[str, dict]) -> dict[str, backends.LoadedModel]:
    """Each variant loaded the way the handler will load it on this host."""
    return {variant: backends.load_model(work_dir, spec) for variant, spec in specs.items()}


def archive_variants(name: str, work_dir: Path, model_store: Path, specs: dict[str, dict], shared_files: list[Path]) -> None:
    """<name>-<variant>.mar for each variant: its artifacts, its variant.json, the shared files (labels, vocab)."""
    for variant, spec in specs.items():
        spec_dir = work_dir / f"{variant}-spec"  # each MAR needs its own file named variant.json
        spec_dir.mkdir()
        (spec_dir / backends.VARIANT_FILE).write_text(json.dumps(spec, indent=2))
        files = [work_dir / file for file in spec["artifacts"].values()]
        archive_tiergate_mar(
            name,
            serialized_file=files[0],
            extra_files=files[1:] + shared_files + [spec_dir / backends.VARIANT_FILE],
            mar_path=model_store / mar_name(name, variant),
        )


def mar_name(name: str, variant: str) -> str:
    return f"{name}-{variant}.mar"


def describe_mars(name: str, specs: dict[str, dict], loaded: dict[str, backends.LoadedModel]) -> dict[str, dict]:
    """build.json's "mars": per MAR its variant, artifacts and the backend it ran on this build host."""
    mars = {}
    for variant, spec in specs.items():
        entry = {"variant": variant, "artifacts": list(spec["artifacts"]), "backend": loaded[variant].backend}
        if variant == "gpu":
            entry["tensorrt_compiled"] = backends.ARTIFACT_TENSORRT in spec["artifacts"]
            if not entry["tensorrt_compiled"]:
                entry["backend_on_cuda_host"] = backends.BACKEND_INDUCTOR_CUDA
        mars[mar_name(name, variant)] = entry
    return mars


def median_latency_ms(loaded: backends.LoadedModel, example: torch.Tensor, runs: int = 20) -> float:
    for _ in range(3):
        loaded.logits(example)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        loaded.logits(example)
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 2)


def latency_report(loaded: dict[str, backends.LoadedModel], example: torch.Tensor) -> dict:
    return {
        "torch_threads": torch.get_num_threads(),
        **{f"{variant} ({model.backend})": median_latency_ms(model, example) for variant, model in loaded.items()},
    }
