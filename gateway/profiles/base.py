"""What profiles share: decoded tensors, their declared schema, the pool's form of a request,
and a comparison of two answers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import GatewayError, bad_request

# Open Inference datatypes with a fixed-size little-endian encoding (BYTES are length-prefixed).
NUMPY_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


@dataclass(frozen=True, slots=True)
class TensorSchema:
    """A declared input or output: the first dimension is the batch; -1 means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    rows: str = "rows"  # what one entry of the batch dimension is, for messages
    layout: str | None = None  # an image tensor's dimension order ("NCHW"), for clients that ask

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, tensor: Tensor, max_batch: int) -> None:
        """A 400 naming what is wrong when `tensor` is not of this schema (413 past max_batch)."""
        expected = ",".join("N" if index == 0 else ("*" if dim == -1 else str(dim)) for index, dim in enumerate(self.shape))
        if tensor.datatype != self.datatype:
            raise bad_request(f"input {self.name!r} must be {self.datatype}, not {tensor.datatype}")
        if len(tensor.shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape[1:], tensor.shape[1:])
        ):
            raise bad_request(f"input {self.name!r} must have shape [{expected}], not {list(tensor.shape)}")
        if tensor.shape[0] < 1:
            raise bad_request(f"input {self.name!r}: a request carries at least one row")
        if tensor.shape[0] > max_batch:
            raise GatewayError(
                413, "PayloadTooLarge", f"a request carries at most {max_batch} {self.rows}, not {tensor.shape[0]}"
            )


@dataclass(frozen=True, slots=True)
class Tensor:
    """One decoded tensor: numbers as a flat numpy array, BYTES as a flat list of elements
    (bytes from binary data, str from JSON)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any

    def flat_json(self) -> list:
        """The data as a flat JSON-ready list."""
        if self.datatype == "BYTES":
            return [item if isinstance(item, str) else item.decode("utf-8", "replace") for item in self.data]
        return self.data.tolist()


@dataclass(frozen=True, slots=True)
class PoolBody:
    """A request as its pool receives it; identical requests have identical bodies."""

    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """How another pool's answer differs from the primary's, in the terms of the shadow metrics.

    `top1_same`: the decisive part matches (top-1 class; for tensors, cosine similarity and
    shapes; for documents, every non-numeric value). `overlap`: shared part, 0..1 (top-k
    classes, or paths of a document). `max_delta`: the largest numeric difference beyond
    what the relative tolerance allows; it agrees within `tolerance`."""

    top1_same: bool
    overlap: float
    max_delta: float
    tolerance: float
    deltas: dict[str, float] = field(default_factory=dict)


class RowCountMismatch(ValueError):
    """Two answers for different numbers of rows (images, documents): not comparable."""


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def infer_request_schema(profile) -> dict:
    """An Open Inference request for a profile's declared inputs, as an OpenAPI schema."""
    inputs = [
        {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string", "enum": [schema.name]},
                "datatype": {"type": "string", "enum": [schema.datatype]},
                "shape": {"type": "array", "minItems": len(schema.shape), "maxItems": len(schema.shape), "items": {"type": "integer"}},
                "data": {"type": "array", "description": "flat or nested as the shape"},
                "parameters": {"type": "object"},
            },
        }
        for schema in profile.inputs
    ]
    count = 1 if profile.one_input_of else len(inputs)
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "description": "echoed in the response"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": count, "maxItems": count, "items": {"oneOf": inputs} if len(inputs) > 1 else inputs[0]},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "enum": [schema.name for schema in profile.outputs]},
                        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                    },
                },
            },
        },
    }


def infer_response_schema(profile) -> dict:
    """An Open Inference answer with a profile's declared outputs, as an OpenAPI schema."""
    return {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string", "enum": [schema.name for schema in profile.outputs]},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "data": {"type": "array"},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    }
