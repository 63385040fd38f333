"""int8 for the CPU pool: torchao's PT2E flow, compiled ahead of time into a package.

PT2E with the X86 Inductor quantizer is the maintained int8 path (torch.ao's FX graph mode and
TorchScript are deprecated; torch 2.14 ships PT2E only through torchao):

    static   weights per channel, activations calibrated on the build's data (convolutional models)
    dynamic  Linear layers; activations quantized per call, no calibration (MLPs, transformers)

A converted PT2E program computes in fp32 between quantize/dequantize nodes; it runs int8
kernels (oneDNN qconv/qlinear, weights prepacked) only once inductor lowers it with freezing.
AOTInductor does that in the build, into a package of native code plus weights that loads in
about 10 ms with no compiler; torch.compile in a pool worker would compile at every start
(2-47 s measured here: bench/int8_paths.py, BENCHMARKS.md). The package's code is for the build host's
vector ISA, which it records: the handler runs it only on a host with that ISA or a wider one
(``tiergate_backends.int8_runs_here``), else the fp32 program the same MAR carries.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

STATIC, DYNAMIC = "static", "dynamic"
# freezing: constant weights, so inductor prepacks them for oneDNN's int8 kernels;
# dynamic_threads: the worker's OMP_NUM_THREADS applies, not the build host's core count.
PACKAGE_CONFIG = {"freezing": True, "cpp.dynamic_threads": True}


def cpu_isa() -> str:
    """The vector ISA ATen dispatches to on this host (AVX512, AVX2, DEFAULT, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def pt2e_int8(
    model: torch.nn.Module | ExportedProgram,
    example: torch.Tensor,
    dynamic_shapes: tuple,
    mode: str,
    calibration: Iterable[torch.Tensor] = (),
) -> torch.fx.GraphModule:
    """model's int8 PT2E program (an fx module computing with quantize/dequantize nodes).

    A module is exported strictly first: the quantizer's fusion patterns (conv + add + relu of
    a residual block) do not match the non-strict graph; a program is taken as it is.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=mode == DYNAMIC))
    batches = [example] if mode == DYNAMIC else within_batch_limit(calibration, dynamic_shapes)
    if not batches:
        raise ValueError("static quantization needs at least one calibration batch")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchao\.")
        prepared = prepare_pt2e(graph_of(model, example, dynamic_shapes), quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        return convert_pt2e(prepared)


def within_batch_limit(batches: Iterable[torch.Tensor], dynamic_shapes: tuple) -> list[torch.Tensor]:
    """The batches, split where one is larger than the program's batch dimension allows."""
    batch_dim = (dynamic_shapes[0] or {}).get(0) if dynamic_shapes else None
    limit = getattr(batch_dim, "max", None)
    limit = int(limit) if isinstance(limit, int) else None  # unbounded: torch's int_oo
    return [chunk for batch in batches for chunk in (batch.split(limit) if limit else [batch])]


def graph_of(model: torch.nn.Module | ExportedProgram, example: torch.Tensor, dynamic_shapes: tuple) -> torch.fx.GraphModule:
    if isinstance(model, ExportedProgram):
        return model.module()
    model = copy.deepcopy(model).eval()
    try:
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=True).module()
    except Exception:  # noqa: BLE001 - strict tracing refuses much that non-strict export takes
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes).module()


def quantize_int8(model: torch.nn.Module, calibration_batches: Iterable[torch.Tensor]) -> torch.fx.GraphModule:
    """Static int8 of a model taking one batch tensor, calibrated on calibration_batches (any batch size)."""
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("static quantization needs at least one calibration batch")
    example = batches[0][:2] if len(batches[0]) >= 2 else batches[0].repeat(2, *[1] * (batches[0].dim() - 1))
    return pt2e_int8(model, example, ({0: Dim("batch")},), STATIC, batches)


def quantized_layers(program: torch.fx.GraphModule) -> int:
    """How many weights the quantizer made int8: each is dequantized per channel in the graph."""
    dequantize = torch.ops.quantized_decomposed.dequantize_per_channel.default
    return sum(1 for node in program.graph.nodes if node.target is dequantize)


def save_int8_package(program: torch.fx.GraphModule, example: torch.Tensor, dynamic_shapes: tuple, path: Path) -> None:
    """Compile the int8 program with AOTInductor into a package at path (the handler loads it)."""
    exported = torch.export.export(program, (example,), dynamic_shapes=dynamic_shapes)
    with torch.no_grad(), warnings.catch_warnings():
        # inductor's int8 lowering copies its zero points the way torch.tensor warns users against
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", module=r"torch\._inductor\.")
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path), inductor_configs=PACKAGE_CONFIG)


def write_int8_package(
    model: torch.nn.Module | ExportedProgram,
    example: torch.Tensor,
    dynamic_shapes: tuple,
    mode: str,
    path: Path,
    calibration: Iterable[torch.Tensor] = (),
) -> int:
    """Quantize model (pt2e_int8) and write its package to path; returns how many layers are
    int8 (none: no package is written, there is nothing int8 to run)."""
    program = pt2e_int8(model, example, dynamic_shapes, mode, calibration)
    layers = quantized_layers(program)
    if layers:
        save_int8_package(program, example, dynamic_shapes, path)
    return layers


def dynamic_shapes_of(program: ExportedProgram) -> tuple:
    """The program's dynamic dimensions, as dynamic_shapes for exporting again with the same ranges."""
    from torch.export.graph_signature import InputKind

    user_inputs = {spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT}
    dims: dict[object, Dim] = {}
    shapes = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        shape = {}
        for index, size in enumerate(node.meta["val"].shape):
            if isinstance(size, torch.SymInt):
                symbol = size.node.expr
                if symbol not in dims:
                    bounds = program.range_constraints[symbol]
                    upper = None if math.isinf(float(bounds.upper)) else int(bounds.upper)
                    dims[symbol] = Dim(f"dim{len(dims)}", min=int(bounds.lower), max=upper)
                shape[index] = dims[symbol]
        shapes.append(shape)
    return tuple(shapes)
