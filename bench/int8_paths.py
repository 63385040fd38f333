"""Which int8 path to serve on this CPU: the PT2E AOTInductor package the builds ship, against
the deprecated FX graph-mode TorchScript model they shipped before and PT2E compiled by
torch.compile in the serving process, all against fp32 eager and fp32 inductor.

resnet18 (random weights, one calibration batch), one thread, images/s at the given batch,
every variant measured in this one process, calls alternating; the seconds each one costs
before its first answer (compile, or loading the package) are printed too.

    .venv/bin/python -m bench.int8_paths [--batch 8] [--calls 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

from model.quantize import STATIC, pt2e_int8, save_int8_package


def fx_torchscript_int8(model: torch.nn.Module, batch: torch.Tensor, path: Path):
    """What tiergate shipped before PT2E: torch.ao FX graph mode, traced and frozen TorchScript."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (batch,))
    prepared(batch)
    torch.jit.save(torch.jit.freeze(torch.jit.trace(convert_fx(prepared), batch).eval()), str(path))
    return torch.jit.load(str(path))


def timed(make) -> tuple[object, float]:
    started = time.perf_counter()
    return make(), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    batch = torch.randn(args.batch, 3, 224, 224)
    example = torch.randn(2, 3, 224, 224)  # export specialises a batch of 1
    dims = ({0: torch.export.Dim("batch", min=1, max=max(2, args.batch))},)
    variants: dict[str, object] = {"fp32 eager": model}
    with torch.no_grad(), tempfile.TemporaryDirectory() as scratch:
        variants["int8 FX TorchScript (before)"] = fx_torchscript_int8(model, batch, Path(scratch) / "fx.pt")
        program, seconds = timed(lambda: pt2e_int8(model, example, dims, STATIC, [batch, example]))
        print(f"PT2E quantize: {seconds:.1f} s", flush=True)
        package = Path(scratch) / "int8.pt2"
        _, seconds = timed(lambda: save_int8_package(program, example, dims, package))
        print(f"int8 PT2E AOTInductor package, build: {seconds:.1f} s", flush=True)
        variants["int8 PT2E AOTI package (shipped)"], seconds = timed(lambda: torch._inductor.aoti_load_package(str(package)))
        print(f"int8 PT2E AOTInductor package, load in the worker: {seconds:.2f} s", flush=True)
        torch._inductor.config.freezing = True  # PT2E int8 lowers to oneDNN int8 kernels only when frozen
        for name, module in (("fp32 inductor", model), ("int8 PT2E torch.compile", program)):
            compiled = torch.compile(module)
            _, seconds = timed(lambda compiled=compiled: compiled(batch))
            variants[name] = compiled
            print(f"{name}: compile in the worker {seconds:.1f} s", flush=True)
        reference = model(batch)
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for module in variants.values():
            module(batch), module(batch)  # first calls of a shape allocate and specialise
        for _ in range(args.calls):
            for name, module in variants.items():
                started = time.perf_counter()
                module(batch)
                timings[name].append(time.perf_counter() - started)
        base = args.batch / statistics.median(timings["fp32 eager"])
        for name, module in variants.items():
            rate = args.batch / statistics.median(timings[name])
            same = (module(batch).argmax(1) == reference.argmax(1)).float().mean().item()
            print(f"{name:34s} {rate:7.1f} images/s  x{rate / base:5.2f} fp32 eager  top-1 agreement {same:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
