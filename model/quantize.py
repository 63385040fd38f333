"""int8 static quantization for CPU serving.

FX graph-mode static quantization (x86/fbgemm kernels) saved as frozen
TorchScript runs int8 with no compile step at worker start. ``torch.ao.quantization``
and TorchScript are deprecated upstream; the maintained PT2E flow (torchao) measured
x1.15 faster here only when inductor compiles it at load (bench/int8_paths.py), which
the handler does not do yet, so their deprecation notices are silenced where they
are used - and only those notices.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

QUANTIZATION_BACKEND = "x86"

_DEPRECATION_NOTICES = (
    r"torch\.ao\.quantization is deprecated",
    r"Please use quant_min and quant_max to specify the range for observers",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation",
    r"`torch\.jit\.\w+` is deprecated",
    # Tracing a quantized graph reads scales/zero points as Python floats; they
    # are constants of the frozen model, so the tracer's caution does not apply.
    r"Converting a tensor to a Python float might cause the trace to be incorrect",
)


@contextlib.contextmanager
def deprecations_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        for notice in _DEPRECATION_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        yield


def default_qconfig_mapping():
    with deprecations_silenced():
        from torch.ao.quantization import get_default_qconfig_mapping

        return get_default_qconfig_mapping(QUANTIZATION_BACKEND)


def quantize_int8(
    model: torch.nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    qconfig_mapping=None,
) -> torch.nn.Module:
    """Return an int8 copy of model, with activation ranges observed on calibration_batches."""
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("static quantization needs at least one calibration batch")
    if qconfig_mapping is None:
        qconfig_mapping = default_qconfig_mapping()
    torch.backends.quantized.engine = QUANTIZATION_BACKEND
    with deprecations_silenced():
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        prepared = prepare_fx(copy.deepcopy(model).eval(), qconfig_mapping, (batches[0],))
        with torch.inference_mode():
            for batch in batches:
                prepared(batch)
        return convert_fx(prepared)


def save_torchscript(module: torch.nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """Trace and freeze module (folds weights into the graph) and save it to path."""
    with deprecations_silenced(), torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(module, example_input).eval())
        torch.jit.save(scripted, str(path))


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """An int8 copy of model's Linear layers, activations quantized per call (no calibration).

    For MLPs and transformers, whose work is in Linear layers: ``quantize_dynamic`` runs
    them on fbgemm's int8 kernels and needs no calibration data.
    """
    torch.backends.quantized.engine = QUANTIZATION_BACKEND
    with deprecations_silenced():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def save_scripted(module: torch.nn.Module, path: Path) -> None:
    """Script (not trace: input shapes such as a text's length vary), freeze and save module."""
    with deprecations_silenced(), torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.script(module).eval())
        torch.jit.save(scripted, str(path))
