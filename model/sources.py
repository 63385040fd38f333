"""Where a bring-your-own model comes from: a factory, an exported program or a torchvision
classifier (the `build:` mapping of a model in the gateway config), resolved to one ModelSource.

A factory is ``package.module:function``; called with no arguments it returns a ModelSource
(or just ``(module, example_inputs)``). Its data, when it has any, says what int8 calibrates
on and what the quality gates compare the variants on; ``data: package.module:function``
supplies it for a factory or program that has none. Without data the build calibrates and
checks on random inputs shaped like the example, and its report says so.

Every failure here is a BuildInputError naming the model and the step, raised before anything
is written, so the previous artifacts stay published.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


class BuildInputError(ValueError):
    """A model source, its data or its example that the build cannot use; names model and step."""

    def __init__(self, model: str, step: str, detail: str):
        super().__init__(f"model {model!r}: {step}: {detail}")
        self.model, self.step = model, step


@dataclass
class ModelData:
    """Calibration batches (static int8 observes them) and held-out evaluation inputs the gates
    compare the variants on, with labels where the task has them."""

    calibration: list[torch.Tensor]
    evaluation: torch.Tensor
    labels: torch.Tensor | None = None
    description: str = "data from the model's factory"


@dataclass
class ModelSource:
    module: torch.nn.Module
    example_inputs: torch.Tensor  # one batch the model takes (any number of rows)
    data: ModelData | None = None
    class_names: list[str] | None = None  # index_to_name.json, for image and text classifiers
    extra_files: dict[str, bytes] = field(default_factory=dict)  # what the handler reads (vocab.json)
    program: torch.export.ExportedProgram | None = None  # set when the source already is one


def import_function(model: str, step: str, reference: str) -> Callable:
    """The function `package.module:function` names."""
    module_name, _, function_name = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a factory's own import errors are the user's to see
        raise BuildInputError(model, step, f"cannot import {module_name!r}: {type(error).__name__}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise BuildInputError(model, step, f"{module_name!r} has no function {function_name!r}")
    return function


def function_source_file(model: str, step: str, reference: str) -> Path | None:
    """The file defining a factory or data function: its text is part of the build's input hash."""
    function = import_function(model, step, reference)
    try:
        return Path(inspect.getfile(function)).resolve()
    except TypeError:
        return None


def call_factory(model: str, reference: str) -> ModelSource:
    result = _call(model, "call factory", import_function(model, "import factory", reference))
    if isinstance(result, tuple) and len(result) == 2:
        result = ModelSource(*result)
    if not isinstance(result, ModelSource) or not isinstance(result.module, torch.nn.Module):
        raise BuildInputError(
            model, "call factory", f"{reference} must return a ModelSource or (nn.Module, example inputs), "
            f"not {type(result).__name__}",
        )  # fmt: skip
    if not isinstance(result.example_inputs, torch.Tensor):
        raise BuildInputError(model, "call factory", "example inputs must be one tensor (a batch the model takes)")
    result.module.eval()
    return result


def load_program(model: str, path: str) -> ModelSource:
    try:
        program = torch.export.load(path)
    except Exception as error:
        raise BuildInputError(model, "load program", f"{path}: {type(error).__name__}: {error}") from error
    args, _ = program.example_inputs or ((), {})
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise BuildInputError(model, "load program", f"{path} must take one tensor and keep its example inputs")
    [input_name] = program.graph_signature.user_inputs
    [node] = [node for node in program.graph.nodes if node.name == input_name]
    batch = node.meta["val"].shape[0]
    if isinstance(batch, int):  # the pools batch requests: a program fixed to one batch size cannot serve them
        raise BuildInputError(
            model, "load program", f"{path} was exported for batches of exactly {batch}; export it with "
            "dynamic_shapes=({0: torch.export.Dim('batch')},)",
        )  # fmt: skip
    return ModelSource(program.module(), args[0], program=program)


def load_data(model: str, reference: str) -> ModelData:
    data = _call(model, "load data", import_function(model, "load data", reference))
    if not isinstance(data, ModelData):
        raise BuildInputError(model, "load data", f"{reference} must return a ModelData, not {type(data).__name__}")
    return data


def synthetic_data(example: torch.Tensor, seed: int = 0) -> ModelData:
    """Inputs shaped like the example when the source brings no data: the gates then measure
    how far int8 moves the outputs, not how well the model does."""
    generator = torch.Generator().manual_seed(seed)
    row = example.shape[1:]

    def batch(rows: int) -> torch.Tensor:
        if example.is_floating_point():
            return torch.randn(rows, *row, generator=generator) * example.std() + example.mean()
        return torch.randint(int(example.min()), int(example.max()) + 1, (rows, *row), generator=generator)

    return ModelData(
        [batch(8) for _ in range(4)], batch(64),
        description="random inputs shaped like the example (the source brought no data)",
    )  # fmt: skip


def check_data(model: str, source: ModelSource, variable_length: bool = False) -> ModelData:
    """The source's data, each batch checked against the example's row shape and dtype (a text's
    length, dimension 1, may vary when variable_length)."""
    data = source.data
    row, dtype = tuple(source.example_inputs.shape[1:]), source.example_inputs.dtype

    def fixed(shape) -> tuple:
        return tuple(shape)[1:] if variable_length else tuple(shape)

    for role, batches in (("calibration", data.calibration), ("evaluation", [data.evaluation])):
        if not batches:
            raise BuildInputError(model, "check data", f"{role} data is empty")
        for index, batch in enumerate(batches):
            if not isinstance(batch, torch.Tensor) or batch.dtype != dtype or fixed(batch.shape[1:]) != fixed(row):
                shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                raise BuildInputError(
                    model, "check data", f"{role} batch {index} is {shape} {getattr(batch, 'dtype', '')}; "
                    f"the model takes (N, {', '.join(map(str, row))}) {dtype}",
                )  # fmt: skip
    if data.labels is not None and len(data.labels) != len(data.evaluation):
        raise BuildInputError(model, "check data", f"{len(data.labels)} labels for {len(data.evaluation)} evaluation rows")
    return data


def _call(model: str, step: str, function: Callable):
    try:
        return function()
    except BuildInputError:
        raise
    except Exception as error:
        raise BuildInputError(model, step, f"{type(error).__name__}: {error}") from error
