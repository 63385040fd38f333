"""Build any model's fp32, int8 and gpu MARs from a model source (`build:` with a factory,
program or torchvision classifier; model/sources.py resolves it).

    fp32  the ExportedProgram, batch dimension dynamic                   -> cpu-fp32
    int8  the CPU pool's MAR: torchao's PT2E int8 (static: calibrated;   -> cpu-int8
          dynamic: Linear layers) compiled by AOTInductor, when it
          agrees with fp32 and is faster at the pool's batch on this
          CPU; otherwise the fp32 program, and the report says why      -> cpu-fp32
    gpu   the fp32 program (+ a TensorRT FP16 engine where CUDA and
          torch_tensorrt exist at build time)              -> tensorrt-fp16 / inductor-cuda / cpu-fp32

The int8 program is quantized from the module (a factory's or torchvision's) or, for a
`program:` source, from the program itself, and exported again with the fp32 program's
dynamic dimensions (model/quantize.py).

The build fails, leaving the previous artifacts published, when a gate fails (the message
names the model and the figure) or when an input is unusable (BuildInputError names the model
and the step: import factory, call factory, load program, load data, check data, export,
quantize int8, check int8).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from model import variants
from model.artifacts import (
    PACKAGE_DIR,
    BuildResult,
    BuiltModel,
    Staging,
    build_once,
    sha256_file,
)
from model.gates import gate_failures, output_figures
from model.gpu import compile_tensorrt_fp16, detect_gpu_build_backend
from model.quantize import cpu_isa, dynamic_shapes_of, write_int8_package
from model.sources import (
    BuildInputError,
    ModelData,
    ModelSource,
    call_factory,
    check_data,
    function_source_file,
    load_data,
    load_program,
    synthetic_data,
)
from model.speed import cpu_pool_choice, measure_speed
from torchserve_backend import tiergate_backends as backends
from torchserve_backend.tiergate_images import CROP_SIZE

logger = logging.getLogger("model.build")

SOURCES = tuple(PACKAGE_DIR / name for name in ("byo.py", "sources.py", "gates.py", "speed.py", "variants.py", "quantize.py", "gpu.py"))
IMAGE_ROW = (3, CROP_SIZE, CROP_SIZE)


def build(artifacts_dir: Path, name: str, config, *, force: bool = False) -> BuildResult:
    """Build model name from config (a gateway.model_config.BuildConfig), unless up to date."""
    served = {  # derived from the model's profile, so left out of the config's own dump
        "kind": kind_of(config),
        "tensors": [[spec.model_dump() for spec in specs] for specs in (config.inputs or [], config.outputs or [])],
    }
    sources, inputs = list(SOURCES), {"build": config.model_dump(mode="json"), **served, "gpu": detect_gpu_build_backend()}
    for step, reference in (("import factory", config.factory), ("load data", config.data)):
        if reference is not None:
            path = function_source_file(name, step, reference)
            sources += [path] if path is not None else []
    if config.program is not None:
        if not Path(config.program).is_file():
            raise BuildInputError(name, "load program", f"{config.program} is not a file")
        inputs["program_sha256"] = sha256_file(Path(config.program))
    if config.weights is not None:
        if not Path(config.weights).is_file():
            raise BuildInputError(name, "load weights", f"{config.weights} is not a file")
        inputs["weights_sha256"] = sha256_file(Path(config.weights))
    if config.torchvision is not None:
        from model import photos

        sources.append(PACKAGE_DIR / "photos.py")
        inputs["photos"] = [sha256_file(path) for path in photos.bundled_photo_paths()]
    return build_once(
        artifacts_dir, name, config.source, sources, inputs,
        lambda staging: build_variants(staging, name, config, inputs["gpu"]), force=force,
    )  # fmt: skip


def kind_of(config) -> str:
    return config.kind or ("image" if config.torchvision is not None else "tensor")


def resolve(name: str, config) -> tuple[ModelSource, ModelData]:
    """The module, its example and its data, each checked (BuildInputError names the failing step)."""
    if config.factory is not None:
        source = call_factory(name, config.factory)
    elif config.program is not None:
        source = load_program(name, config.program)
    else:
        from model.torchvision_source import torchvision_source

        source = torchvision_source(name, config.torchvision, config.weights)
    if config.data is not None:
        source.data = load_data(name, config.data)
    kind = kind_of(config)
    check_example(name, kind, config, source)
    if source.data is None:
        source.data = synthetic_data(source.example_inputs)
    return source, check_data(name, source, variable_length=kind == "text")


def check_example(name: str, kind: str, config, source: ModelSource) -> None:
    """The example must be what the handler will feed the model for this model's profile."""
    example, row = source.example_inputs, tuple(source.example_inputs.shape[1:])
    if kind == "image" and row != IMAGE_ROW:
        raise BuildInputError(name, "check example", f"an image classifier takes (N, {', '.join(map(str, IMAGE_ROW))}), not {tuple(example.shape)}")
    if kind == "tensor":
        if not example.is_floating_point():
            raise BuildInputError(name, "check example", f"a tensor model takes FP32 rows, not {example.dtype}")
        if config.inputs is not None:
            declared = config.inputs[0].shape[1:]
            if len(declared) != len(row) or any(d not in (-1, r) for d, r in zip(declared, row)):
                raise BuildInputError(name, "check example", f"the example's rows are {list(row)}; the model config declares {declared}")
    if kind == "text":
        if example.is_floating_point() or example.dim() != 2:
            raise BuildInputError(name, "check example", "a text model takes (N, tokens) integer ids")
        if "vocab.json" not in source.extra_files or not source.class_names:
            raise BuildInputError(name, "check example", "a text model's source brings vocab.json and its class names")


def export_example(source: ModelSource) -> torch.Tensor:
    """Two rows of the example: exporting with one would specialise the batch to 1."""
    example = source.example_inputs
    return (torch.cat([example[:1], example[:1]]) if len(example) < 2 else example[:2]).contiguous()


def export_fp32(name: str, kind: str, source: ModelSource, max_batch_size: int) -> torch.export.ExportedProgram:
    """The fp32 program with a dynamic batch (and a dynamic length for text)."""
    if source.program is not None:
        return source.program
    example = export_example(source)
    dims = {0: torch.export.Dim("batch", min=1, max=max_batch_size)}
    if kind == "text":
        dims[1] = torch.export.Dim("tokens", min=1, max=max(2, example.shape[1]) * 64)
    try:
        return torch.export.export(copy.deepcopy(source.module), (example,), dynamic_shapes=(dims,))
    except Exception as error:
        raise BuildInputError(name, "export", f"torch.export cannot trace the module: {type(error).__name__}: {str(error)[:600]}") from error


def quantize(name: str, mode: str, source: ModelSource, data: ModelData, fp32: torch.export.ExportedProgram, path: Path) -> dict:
    """Write the int8 package to path when quantizing changed a layer; return what was done."""
    example, dims = export_example(source), dynamic_shapes_of(fp32)
    try:
        layers = write_int8_package(source.program or source.module, example, dims, mode, path, data.calibration)
    except Exception as error:
        raise BuildInputError(
            name, f"quantize int8 ({mode})", f"{type(error).__name__}: {str(error)[:600]} (quantize: none builds without int8)"
        ) from error
    return {"method": f"pt2e-x86-inductor-{mode}-aoti", "quantized_layers": layers}


def build_variants(staging: Staging, name: str, config, gpu_build_backend: str) -> BuiltModel:
    kind = kind_of(config)
    source, data = resolve(name, config)
    has_convolutions = any(isinstance(module, torch.nn.modules.conv._ConvNd) for module in source.module.modules())
    mode = config.quantize or ("static" if has_convolutions else "dynamic")
    work, files = staging.work_dir, artifact_files(name)
    logger.info("%s: exporting fp32 from %s", name, config.source)
    program = export_fp32(name, kind, source, config.max_batch_size)
    torch.export.save(program, str(work / files[backends.ARTIFACT_FP32]))
    fp32 = load_artifact(work, files, backends.ARTIFACT_FP32, config.max_batch_size)
    reference = run_on(name, "check data", "the fp32 program", fp32, data.evaluation)

    gpu_artifacts = [backends.ARTIFACT_FP32]
    if gpu_build_backend == backends.BACKEND_TENSORRT_FP16 and source.example_inputs.is_floating_point():
        logger.info("%s: compiling TensorRT FP16", name)
        compile_tensorrt_fp16(source.module, source.example_inputs, config.max_batch_size, work / files[backends.ARTIFACT_TENSORRT])
        gpu_artifacts.insert(0, backends.ARTIFACT_TENSORRT)

    figures, quantization, speed = {"fp32": output_figures(reference, reference, data.labels)}, None, None
    if mode != "none":
        logger.info("%s: quantizing to int8 (%s) and compiling it (AOTInductor)", name, mode)
        quantization = quantize(name, mode, source, data, program, work / files[backends.ARTIFACT_INT8])
    if quantization and quantization["quantized_layers"]:
        int8 = load_artifact(work, files, backends.ARTIFACT_INT8, config.max_batch_size)
        figures["int8"] = output_figures(reference, run_on(name, "check int8", "the int8 model", int8, data.evaluation), data.labels)
        speed = measure_speed(fp32, int8, data.evaluation, sorted({1, config.pool_batch_size}))
    cpu_serves, why = cpu_pool_choice(mode, quantization, speed, config.pool_batch_size)

    kind_fields = tensor_fields(config, source, reference) if kind == "tensor" else {}
    specs = variants.variant_specs(name, kind, config.max_batch_size, files, gpu_artifacts, task=config.task, **kind_fields)
    if cpu_serves != "int8":
        specs["int8"]["artifacts"] = {backends.ARTIFACT_FP32: files[backends.ARTIFACT_FP32]}
    loaded = variants.load_variants(work, specs)
    figures["gpu"] = output_figures(reference, loaded["gpu"].logits(data.evaluation), data.labels)
    gates = config.quality_gates.model_dump()
    labelled = "labelled" if data.labels is not None else "no labels"
    report = {
        "model": name,
        "source": config.source,
        "kind": kind,
        "task": config.task,
        "data": f"{data.description} ({sum(map(len, data.calibration))} calibration rows, "
        f"{len(data.evaluation)} evaluation rows, {labelled})",
        "quantize": {"mode": mode, **(quantization or {})},
        "figures": {variant: {key: round(value, 6) for key, value in f.items()} for variant, f in figures.items()},
        "gates": {gate: bound for gate, bound in gates.items() if bound is not None},
        "speed": speed,
        "cpu_pool": {"serves": cpu_serves, "backend": loaded["int8"].backend, "why": why},
        "backends": {variant: model.backend for variant, model in loaded.items()},
        "failures": gate_failures(figures, gates),
    }
    if not report["failures"]:
        logger.info("%s: archiving MARs", name)
        variants.archive_variants(name, work, staging.model_store, specs, shared_files(work, source))
    mars = variants.describe_mars(name, specs, loaded)
    mars[variants.mar_name(name, "int8")]["serves"] = cpu_serves
    return BuiltModel(mars, report, {"source": config.source, "quantize": report["quantize"], "cpu_pool": report["cpu_pool"]})


def artifact_files(name: str) -> dict[str, str]:
    return {
        backends.ARTIFACT_FP32: f"{name}-fp32.pt2",
        backends.ARTIFACT_INT8: f"{name}-int8.aoti.pt2",
        backends.ARTIFACT_TENSORRT: f"{name}-tensorrt-fp16.ep",
    }


def load_artifact(work: Path, files: dict[str, str], artifact: str, max_batch_size: int) -> backends.LoadedModel:
    """One serialized model, loaded the way the handler loads it."""
    spec = {"variant": "fp32", "artifacts": {artifact: files[artifact]}, "max_batch_size": max_batch_size}
    if artifact == backends.ARTIFACT_INT8:
        spec.update(variant="int8", **{backends.ISA_FIELD: cpu_isa()})  # built here, for this CPU
    return backends.load_model(work, spec)


def run_on(name: str, step: str, what: str, model: backends.LoadedModel, rows: torch.Tensor) -> torch.Tensor:
    try:
        return model.logits(rows)
    except Exception as error:
        raise BuildInputError(name, step, f"{what} does not run on the evaluation data: {type(error).__name__}: {str(error)[:300]}") from error


def shared_files(work: Path, source: ModelSource) -> list[Path]:
    """Files every variant's MAR carries: class names, and what the source's handler reads (vocab.json)."""
    files = []
    if source.class_names:
        files.append(work / backends.LABELS_FILE)
        files[-1].write_text(json.dumps({str(index): label for index, label in enumerate(source.class_names)}))
    for file_name, content in source.extra_files.items():
        files.append(work / file_name)
        files[-1].write_bytes(content)
    return files


def tensor_fields(config, source: ModelSource, reference: torch.Tensor) -> dict:
    """variant.json's tensors: the model config's declaration, else named after the example."""
    if config.inputs is not None and config.outputs is not None:
        return {"inputs": [spec.model_dump() for spec in config.inputs], "outputs": [spec.model_dump() for spec in config.outputs]}
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *source.example_inputs.shape[1:]]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, *reference.shape[1:]]}],
    }
