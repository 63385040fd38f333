"""Tensor models: named FP32 tensors in the Open Inference Protocol's JSON form, probabilities out.

The gateway sends ``{"inputs": [{"name", "datatype", "shape": [N, ...], "data": [flat]}]}``
(already checked against the model's declared tensors); the answer is
``{"model_name", "model_version", "outputs": [{"name", "datatype": "FP32", "shape": [N, C],
"data": [flat]}]}`` with softmax probabilities. The handler checks again what it relies on,
so a request that reaches a pool some other way gets a 400, never a 500.

Ships in the MAR as a top-level module beside handler.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch

try:  # inside a MAR: TorchServe puts the model directory on the path, siblings are top-level
    from tiergate_backends import InvalidInput, request_payload
except ModuleNotFoundError:
    from torchserve_backend.tiergate_backends import InvalidInput, request_payload

# Rows one request may carry: bounds what a single body can make a worker allocate.
DEFAULT_MAX_REQUEST_ROWS = 1024


class TensorInputs:
    """One FP32 input tensor [N, features...] → one FP32 output [N, classes] of probabilities."""

    def __init__(self, variant: dict, labels: dict[int, str]):
        [self.input] = variant["inputs"]
        [self.output] = variant["outputs"]
        self.row_shape = [int(dim) for dim in self.input["shape"][1:]]
        self.max_rows = int(variant.get("max_request_rows", DEFAULT_MAX_REQUEST_ROWS))

    def rows(self, request: Any) -> torch.Tensor:
        body = request_payload(request)
        name = self.input["name"]
        expected = f"[N,{','.join(map(str, self.row_shape))}]"
        if not isinstance(body, dict):
            raise InvalidInput(f"send application/json {{\"inputs\": [{{\"name\": {name!r}, ...}}]}}")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InvalidInput(f"send exactly one input, {name!r} (FP32 {expected})")
        tensor = inputs[0]
        if tensor.get("name") != name or tensor.get("datatype") != "FP32":
            raise InvalidInput(f"this model takes one input {name!r}, FP32 {expected}")
        shape, data = tensor.get("shape"), tensor.get("data")
        if not isinstance(shape, list) or not all(type(dim) is int for dim in shape) or shape[1:] != self.row_shape:
            raise InvalidInput(f"input {name!r} must have shape {expected}, got {shape}")
        if not 1 <= shape[0] <= self.max_rows:
            raise InvalidInput(f"a request carries 1 to {self.max_rows} rows, not {shape[0]}")
        if not isinstance(data, list) or len(data) != math.prod(shape):
            raise InvalidInput(f"input {name!r} data must be a flat list of {math.prod(shape)} numbers")
        if not all(type(value) in (int, float) for value in data):
            raise InvalidInput(f"input {name!r} data must be numbers")
        values = torch.tensor(data, dtype=torch.float32)
        if not torch.isfinite(values).all():
            raise InvalidInput(f"input {name!r} data must be finite numbers")
        return values.reshape(shape)

    def collate(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(rows)

    def answer(self, request: Any, probabilities: torch.Tensor, model_name: str, model_version: str) -> dict:
        return {
            "model_name": model_name,
            "model_version": model_version,
            "outputs": [
                {
                    "name": self.output["name"],
                    "datatype": "FP32",
                    "shape": list(probabilities.shape),
                    "data": probabilities.flatten().tolist(),
                }
            ],
        }

    def example(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, *self.row_shape)
