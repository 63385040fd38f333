"""The Open Inference Protocol's wire form of tensors: a JSON request (data inline, flat or
nested), or a JSON header followed by binary tensor data (`Inference-Header-Content-Length`).

Decoding is the same for every model: names, datatypes, shapes and data lengths are checked
against each other here, and the model's profile then checks them against what it declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import orjson

from .errors import GatewayError, bad_request
from .profiles.base import NUMPY_DTYPES, Tensor, element_count

HEADER_LENGTH = "inference-header-content-length"
JSON_CONTENT_TYPES = frozenset({"", "application/json"})  # tritonclient sends none
BINARY_CONTENT_TYPES = JSON_CONTENT_TYPES | {"application/octet-stream"}
MAX_DIMS = 8
MAX_INPUTS = 64


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded infer request: its inputs, its `id`, and the outputs it asks for
    (name → as binary data), or None for every output."""

    inputs: list[Tensor]
    id: str | None
    outputs: dict[str, bool] | None
    binary_default: bool


def binary_header_length(headers: Mapping[str, str]) -> int | None:
    """The JSON header's length when the body uses the binary tensor data extension; None
    for a plain JSON body. Refuses content types and encodings that are neither (415)."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise GatewayError(415, "UnsupportedMediaType", "compressed request bodies are not accepted")
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    declared = headers.get(HEADER_LENGTH)
    if declared is None:
        if content_type not in JSON_CONTENT_TYPES:
            raise GatewayError(
                415, "UnsupportedMediaType",
                "send JSON (application/json), or binary tensor data with Inference-Header-Content-Length",
            )
        return None
    if content_type not in BINARY_CONTENT_TYPES:
        raise GatewayError(415, "UnsupportedMediaType", "binary tensor data is sent as application/octet-stream")
    if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
        raise bad_request("Inference-Header-Content-Length is not a number")
    return int(declared)


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an infer request; every client mistake is a 400 naming it."""
    if header_length is None:
        header, binary = body, b""
    elif 0 < header_length <= len(body):
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        raise bad_request("Inference-Header-Content-Length is longer than the body")
    request = _parse_json_object(header)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request('"id" must be a string')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
        raise bad_request(f'"inputs" must be a list of at most {MAX_INPUTS} tensors')
    tensors, offset = [], 0
    for tensor in inputs:
        decoded, offset = _decode_input(tensor, binary, offset)
        tensors.append(decoded)
    if offset != len(binary):
        raise bad_request("binary data follows the JSON header, but no input declares binary_data_size for all of it")
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise bad_request(f"an input is named twice: {names}")
    parameters = _parameters(request, "the request")
    binary_default = _flag(parameters, "binary_data_output")
    return InferRequest(tensors, request_id, _requested_outputs(request, binary_default), binary_default)


def _parse_json_object(text: bytes) -> dict:
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_request("the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise bad_request("the request must be a JSON object")
    return request


def _decode_input(tensor: Any, binary: memoryview | bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(tensor, dict):
        raise bad_request("each input must be an object")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise bad_request("each input needs a name")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMPY_DTYPES):
        raise bad_request(f"input {name!r}: unknown datatype")
    if (
        not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS
        or not all(type(dim) is int and dim >= 0 for dim in shape)
    ):
        raise bad_request(f"input {name!r}: shape must be a list of 1 to {MAX_DIMS} non-negative integers")
    count = element_count(tuple(shape))
    size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise bad_request(f"input {name!r} has no data")
        data = _json_data(name, datatype, tensor["data"], tuple(shape))
    else:
        if "data" in tensor:
            raise bad_request(f"input {name!r} has both data and binary_data_size")
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise bad_request(f"input {name!r}: binary_data_size runs past the end of the body")
        data = _binary_data(name, datatype, bytes(binary[offset:offset + size]), count)
        offset += size
    return Tensor(name, datatype, tuple(shape), data), offset


def _json_data(name: str, datatype: str, data: Any, shape: tuple[int, ...]) -> Any:
    count = element_count(shape)
    wrong = bad_request(f"input {name!r}: data must be {count} {_kind(datatype)}, flat or nested as the shape")
    if not isinstance(data, list):
        raise wrong
    if datatype == "BYTES":
        flat = _flatten(data)
        if flat is None or len(flat) != count or not all(isinstance(item, str) for item in flat):
            raise wrong
        return flat
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise wrong from None
    if array.size != count or array.dtype.kind not in ("b" if datatype == "BOOL" else "iuf"):
        raise wrong
    if array.ndim != 1 and array.shape != shape:
        raise wrong
    if datatype != "BOOL" and array.dtype.kind == "b":
        raise wrong
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(NUMPY_DTYPES[datatype]).ravel()
    if converted.dtype.kind == "f" and not np.isfinite(converted).all():
        raise bad_request(f"input {name!r}: data must be finite numbers within {datatype}'s range")
    if converted.dtype.kind in "iu" and not np.array_equal(converted, array.ravel()):
        raise bad_request(f"input {name!r}: data must be whole numbers within {datatype}'s range")
    return converted


def _binary_data(name: str, datatype: str, blob: bytes, count: int) -> Any:
    if datatype == "BYTES":
        items, at = [], 0
        while at + 4 <= len(blob) and len(items) < count:
            size = int.from_bytes(blob[at:at + 4], "little")
            if at + 4 + size > len(blob):
                break
            items.append(blob[at + 4:at + 4 + size])
            at += 4 + size
        if len(items) != count or at != len(blob):
            raise bad_request(f"input {name!r}: binary data is not {count} length-prefixed elements")
        return items
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if len(blob) != count * dtype.itemsize:
        raise bad_request(f"input {name!r}: binary data must be {count * dtype.itemsize} bytes ({count} {datatype})")
    array = np.frombuffer(blob, dtype=dtype)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise bad_request(f"input {name!r}: data must be finite numbers")
    return array


def _flatten(data: list) -> list | None:
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_DIMS:
                    return None
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _kind(datatype: str) -> str:
    return {"BYTES": "strings", "BOOL": "booleans"}.get(datatype, "numbers")


def _parameters(holder: dict, what: str) -> dict:
    parameters = holder.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request(f"{what}: parameters must be an object")
    return parameters


def _flag(parameters: dict, name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false")
    return value


def _requested_outputs(request: dict, binary_default: bool) -> dict[str, bool] | None:
    requested = request.get("outputs")
    if requested is None:
        return None
    if not isinstance(requested, list) or not requested:
        raise bad_request("outputs must be a non-empty list")
    outputs: dict[str, bool] = {}
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str) or name in outputs:
            raise bad_request("each output is an object naming an output once")
        parameters = _parameters(output, f"output {name!r}")
        if "classification" in parameters:
            raise bad_request("the classification extension is not supported")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise bad_request(f"output {name!r}: binary_data must be true or false")
        outputs[name] = binary
    return outputs


def render_infer_response(
    model: str, version: str | None, request: InferRequest, produced: list[Tensor]
) -> tuple[bytes, dict[str, str]]:
    """The client's answer: the requested outputs (all, by default), in the requested encoding."""
    chosen = request.outputs or {tensor.name: request.binary_default for tensor in produced}
    by_name = {tensor.name: tensor for tensor in produced}
    outputs, blobs = [], []
    for name, binary in chosen.items():
        tensor = by_name[name]
        entry: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary:
            blob = _binary_tensor(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.flat_json()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model}
    if version is not None:
        response["model_version"] = version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = outputs
    header = orjson.dumps(response)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _binary_tensor(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        items = (item.encode() if isinstance(item, str) else item for item in tensor.data)
        return b"".join(len(item).to_bytes(4, "little") + item for item in items)
    return np.asarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


def tensors_from_answer(answer: Any) -> tuple[list[Tensor], str | None]:
    """A pool's Open Inference outputs (`{"outputs": [...]}` with flat JSON data) as tensors,
    and its `model_version`; ValueError when they are not of that form."""
    if not isinstance(answer, dict) or not isinstance(answer.get("outputs"), list):
        raise ValueError("expected an object with a list of outputs")
    tensors = []
    for output in answer["outputs"]:
        if not isinstance(output, dict):
            raise ValueError("each output is an object")
        name, datatype, shape, data = (output.get(key) for key in ("name", "datatype", "shape", "data"))
        if not isinstance(name, str) or not isinstance(shape, list) or not isinstance(data, list):
            raise ValueError("each output has a name, a shape and flat data")
        if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMPY_DTYPES):
            raise ValueError("unknown datatype")
        if not all(type(dim) is int and dim >= 0 for dim in shape) or element_count(tuple(shape)) != len(data):
            raise ValueError(f"output {name!r}: data does not match its shape")
        values = [str(item) for item in data] if datatype == "BYTES" else np.asarray(data, dtype=NUMPY_DTYPES[datatype])
        tensors.append(Tensor(name, datatype, tuple(shape), values))
    version = answer.get("model_version")
    return tensors, version if isinstance(version, str) else None
