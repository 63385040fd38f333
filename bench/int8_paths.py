"""Which int8 path to serve on this CPU: the FX graph-mode TorchScript model the builds ship,
against the maintained PT2E flow (torchao's X86InductorQuantizer, compiled by inductor with
freezing, as its documentation asks), both against fp32 eager and fp32 inductor.

resnet18 (random weights, one calibration batch), one thread, images/s at the given batch,
every variant measured in this one process, calls alternating. PT2E needs torchao, which
tiergate does not depend on (pip install torchao into a scratch --target and put it on
PYTHONPATH); without it those rows are skipped.

    PYTHONPATH=.:/tmp/torchao .venv/bin/python -m bench.int8_paths [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

from model.quantize import quantize_int8, save_torchscript


def pt2e_int8(model: torch.nn.Module, batch: torch.Tensor):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    # strict export: torchao 0.18's quantizer fails on the non-strict graph of a residual block
    prepared = prepare_pt2e(torch.export.export(model, (batch,), strict=True).module(), quantizer)
    prepared(batch)
    return convert_pt2e(prepared)


def compiled(module, batch: torch.Tensor) -> tuple[object, float]:
    started = time.perf_counter()
    module = torch.compile(module)
    module(batch)
    return module, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch._inductor.config.freezing = True  # PT2E int8 lowers to oneDNN int8 kernels only when frozen
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    batch = torch.randn(args.batch, 3, 224, 224)
    variants: dict[str, object] = {"fp32 eager": model}
    with torch.no_grad():
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "int8.pt"
            save_torchscript(quantize_int8(model, [batch]), batch, path)
            variants["int8 FX TorchScript (shipped)"] = torch.jit.load(str(path))
        variants["fp32 inductor"], seconds = compiled(model, batch)
        print(f"fp32 inductor compile: {seconds:.1f} s", flush=True)
        try:
            variants["int8 PT2E inductor"], seconds = compiled(pt2e_int8(model, batch), batch)
            print(f"int8 PT2E inductor compile: {seconds:.1f} s", flush=True)
        except ImportError:
            print("torchao not importable: PT2E skipped")
        reference = model(batch)
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for module in variants.values():
            module(batch), module(batch)  # TorchScript optimises on its first runs
        for _ in range(args.calls):
            for name, module in variants.items():
                started = time.perf_counter()
                module(batch)
                timings[name].append(time.perf_counter() - started)
        base = args.batch / statistics.median(timings["fp32 eager"])
        for name, module in variants.items():
            rate = args.batch / statistics.median(timings[name])
            same = (module(batch).argmax(1) == reference.argmax(1)).float().mean().item()
            print(f"{name:32s} {rate:7.1f} images/s  x{rate / base:5.2f} fp32 eager  top-1 agreement {same:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
