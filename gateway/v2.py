"""The Open Inference Protocol (KServe v2) REST surface, beside the TorchServe API.

KServe and Triton clients (tritonclient.http, kserve's REST client) speak it:

    GET  /v2                                      server metadata
    GET  /v2/health/live | /v2/health/ready       liveness; readiness (every serving pool pings)
    GET  /v2/models/{m}[/versions/{v}]            model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready      model readiness
    POST /v2/models/{m}[/versions/{v}]/infer      inference

An infer request carries exactly one input: `images`, BYTES [N] JPEG/PNG files (base64
strings in JSON, raw bytes with the binary tensor data extension), or `pixels`, FP32
[N, 3, 224, 224] already resized, center-cropped and ImageNet-normalized. It is admitted
here (content type, size, JSON structure, shapes, datatypes, image magic) before any
pool is called, then rewritten into the one JSON form the pools' handler reads
(torchserve_backend/handler.py) and sent through the same `Pipeline.infer` as the
TorchServe API: tier routing, limits, coalescing, shadowing and metrics all apply, and
identical tensors coalesce however they were encoded. The pool answers the outputs
`top5_probabilities` (FP32 [N, 5]) and `top5_labels` (BYTES [N, 5]); this module picks
the requested ones, echoes the request's `id` and, when asked, encodes them as binary
tensor data.

Errors on these paths are `{"error": message}` with the status the TorchServe API gives.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from . import admit
from .auth import KeyBook, authorize
from .errors import GatewayError, bad_request
from .pipeline import Pipeline

log = logging.getLogger("tiergate")

MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?/?$")
HEADER_LENGTH = "inference-header-content-length"  # the binary tensor data extension
JSON_CONTENT_TYPES = frozenset({"", "application/json"})  # tritonclient sends none
BINARY_CONTENT_TYPES = JSON_CONTENT_TYPES | {"application/octet-stream"}
# Larger bodies are parsed off the event loop, so calls already admitted keep flowing
# (below it a thread hand-off costs more than the parse).
PARSE_IN_THREAD_BYTES = 64 * 1024

# The contract with the pools' handler (its V2_* constants): names, shapes and limits must match.
IMAGES, PIXELS = "images", "pixels"
PROBABILITIES, LABELS = "top5_probabilities", "top5_labels"
PIXEL_DIMS = (3, 224, 224)
TOP_K = 5
MAX_IMAGES = 32

MODEL_INPUTS = [
    {"name": IMAGES, "datatype": "BYTES", "shape": [-1]},
    {"name": PIXELS, "datatype": "FP32", "shape": [-1, *PIXEL_DIMS]},
]
MODEL_OUTPUTS = [
    {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, TOP_K]},
    {"name": LABELS, "datatype": "BYTES", "shape": [-1, TOP_K]},
]
SERVER_METADATA = orjson.dumps(
    {"name": "tiergate", "version": importlib.metadata.version("tiergate"), "extensions": ["binary_tensor_data"]}
)


class OpenInferenceFront:
    """The /v2 paths, over the same pipeline and API keys as the TorchServe API."""

    def __init__(self, pipeline: Pipeline, keys: KeyBook) -> None:
        self.pipeline = pipeline
        self.keys = keys

    async def handle(self, request: Request, request_id: str, arrived: float) -> Response:
        """`arrived`: time.monotonic() when the request came in; its tier's deadline runs from then."""
        try:
            return await self._dispatch(request, request_id, arrived)
        except GatewayError as exc:
            return error_response(exc, request_id)
        except Exception:  # a gateway bug: answer in this protocol's shape, log without the payload
            log.exception("unhandled error for request %s", request_id)
            return error_response(GatewayError(500, "InternalError", "internal gateway error"), request_id)

    async def _dispatch(self, request: Request, request_id: str, arrived: float) -> Response:
        path, method = request.url.path.rstrip("/"), request.method
        match = MODEL_PATH.match(path)
        if match:
            model, version, action = match.groups()
            admit.check_model(self.pipeline.config, model, version)
            if action == "infer":
                _allow(method, "POST")
                return await self._infer(request, request_id, arrived, model, version)
            _allow(method, "GET")
            if action == "ready":
                await self._check_ready()
                return _json({"name": model, "ready": True})
            return _json({"name": model, "platform": "torchserve", "inputs": MODEL_INPUTS, "outputs": MODEL_OUTPUTS})
        if path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            _allow(method, "GET")
            if path == "/v2":
                return Response(SERVER_METADATA, 200, media_type="application/json")
            if path == "/v2/health/ready":
                await self._check_ready()
                return _json({"ready": True})
            return _json({"live": True})
        raise GatewayError(404, "NotFound", "no such endpoint; inference is POST /v2/models/{model}/infer")

    async def _check_ready(self) -> None:
        problems = await self.pipeline.readiness()
        failing = [f"{pool}: {why}" for pool, why in sorted(problems.items()) if why is not None]
        if failing:
            raise GatewayError(503, "NotReady", "not ready; " + "; ".join(failing))

    async def _infer(
        self, request: Request, request_id: str, arrived: float, model: str, version: str | None
    ) -> Response:
        config = self.pipeline.config
        caller = self.keys.identify(request.headers.get("authorization"))
        tier = admit.resolve_tier(config, request, caller.default_tier if caller else None)
        authorize(caller, tier)
        header_length = binary_header_length(request)
        body = await admit.read_body(request, config.max_body_bytes)
        if len(body) > PARSE_IN_THREAD_BYTES:
            infer = await asyncio.to_thread(parse_infer_request, body, header_length)
        else:
            infer = parse_infer_request(body, header_length)
        if len(infer.pool_body) > config.max_body_bytes:  # e.g. binary FP32 grown into JSON
            raise GatewayError(
                413, "PayloadTooLarge", f"the tensor exceeds the {config.max_body_bytes}-byte limit as JSON"
            )
        call = admit.Call(
            model=model,
            version=version,
            tier=tier,
            body=infer.pool_body,
            request_id=request_id,
            deadline=arrived + config.tiers[tier].deadline_ms / 1000,  # upload and parsing count too
            content_type="application/json",
        )
        try:
            reply = await self.pipeline.infer(call)
            content, headers = render_infer_response(model, infer, reply.inference.body, reply.pool)
        except GatewayError as exc:
            exc.headers.setdefault("X-Tiergate-Tier", tier)
            raise
        headers.update(reply.headers(tier, request_id))
        return Response(content, 200, headers=headers)


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InferRequest:
    """An admitted infer request: what the pool is sent, and how to answer the client."""

    pool_body: bytes
    id: str | None  # the request's own "id", echoed in the response
    outputs: dict[str, bool]  # requested output → send it as binary tensor data; in answer order


def binary_header_length(request: Request) -> int | None:
    """The JSON header's length when the body uses the binary tensor data extension; None
    for a plain JSON body. Refuses content types and encodings that are neither (415)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise GatewayError(415, "UnsupportedMediaType", "compressed request bodies are not accepted")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get(HEADER_LENGTH)
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
    """Validate an infer request (JSON, or JSON header + binary tensor data) and rewrite
    it as the pools' canonical JSON form; every client mistake is a 400 (413 past MAX_IMAGES)."""
    if header_length is None:
        header, binary = body, b""
    elif 0 < header_length <= len(body):
        header, binary = body[:header_length], body[header_length:]
    else:
        raise bad_request("Inference-Header-Content-Length is longer than the body")
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise bad_request("the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise bad_request("the request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request('"id" must be a string')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_request(
            f"send exactly one input: {IMAGES!r} (BYTES [N]) or {PIXELS!r} (FP32 [N,{','.join(map(str, PIXEL_DIMS))}])"
        )
    tensor = inputs[0]
    name, shape = tensor.get("name"), tensor.get("shape")
    if name not in (IMAGES, PIXELS):
        raise bad_request(f"unknown input; this model takes {IMAGES!r} or {PIXELS!r}")
    if not isinstance(shape, list) or not shape or not all(type(dim) is int for dim in shape):
        raise bad_request(f"input {name!r}: shape must be a non-empty list of integers")
    count = shape[0]
    if count < 1:
        raise bad_request(f"input {name!r}: a request carries at least one image")
    if count > MAX_IMAGES:
        raise GatewayError(413, "PayloadTooLarge", f"a request carries at most {MAX_IMAGES} images, not {count}")
    data, blob = _tensor_data(tensor, name, binary)
    if name == IMAGES:
        canonical = _images(tensor, shape, data, blob)
    else:
        canonical = _pixels(tensor, shape, data, blob)
    pool_body = orjson.dumps({"inputs": [canonical]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return InferRequest(pool_body, request_id, _requested_outputs(request))


def _tensor_data(tensor: dict, name: str, binary: bytes) -> tuple[Any, bytes | None]:
    """The input's JSON data, or its binary data; exactly one of the two."""
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request(f"input {name!r}: parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise bad_request("binary data follows the JSON header, but no input declares binary_data_size")
        if "data" not in tensor:
            raise bad_request(f"input {name!r} has no data")
        return tensor["data"], None
    if "data" in tensor:
        raise bad_request(f"input {name!r} has both data and binary_data_size")
    if type(size) is not int or size != len(binary):
        raise bad_request(f"input {name!r}: binary_data_size must be the {len(binary)} bytes after the JSON header")
    return None, binary


def _images(tensor: dict, shape: list[int], data: Any, blob: bytes | None) -> dict:
    count = shape[0]
    if tensor.get("datatype") != "BYTES" or len(shape) != 1:
        raise bad_request(f"input {IMAGES!r} must be BYTES of shape [N]")
    files = _split_bytes_elements(blob, count) if blob is not None else _base64_elements(data, count)
    for index, file in enumerate(files):
        try:
            admit.check_image(file)
        except GatewayError as exc:
            raise bad_request(f"{IMAGES}[{index}]: {exc.message}") from None
    encoded = [base64.b64encode(file).decode("ascii") for file in files]
    return {"name": IMAGES, "datatype": "BYTES", "shape": [count], "data": encoded}


def _base64_elements(data: Any, count: int) -> list[bytes]:
    if not isinstance(data, list) or len(data) != count:
        raise bad_request(f"input {IMAGES!r}: data must be a list of N={count} base64 strings")
    files = [_decode_base64(item) for item in data]
    for index, file in enumerate(files):
        if file is None:
            raise bad_request(f"{IMAGES}[{index}] is not a base64 string (JSON BYTES carry images base64-encoded)")
    return files


def _decode_base64(item: Any) -> bytes | None:
    if not isinstance(item, str):
        return None
    try:
        return base64.b64decode(item, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII string
        return None


def _split_bytes_elements(blob: bytes, count: int) -> list[bytes]:
    """BYTES binary tensor data: each element a 4-byte little-endian length, then the bytes."""
    files, at = [], 0
    for _ in range(count):
        size = int.from_bytes(blob[at:at + 4], "little")
        if at + 4 + size > len(blob):
            break
        files.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    if len(files) != count or at != len(blob):
        raise bad_request(f"input {IMAGES!r}: binary data is not N={count} length-prefixed elements")
    return files


def _pixels(tensor: dict, shape: list[int], data: Any, blob: bytes | None) -> dict:
    expected = [shape[0], *PIXEL_DIMS]
    if tensor.get("datatype") != "FP32" or shape != expected:
        raise bad_request(
            f"input {PIXELS!r} must be FP32 of shape [N,{','.join(map(str, PIXEL_DIMS))}] "
            "(resized, center-cropped, ImageNet-normalized RGB)"
        )
    size = math.prod(expected)
    if blob is not None:
        if len(blob) != size * 4:
            raise bad_request(f"input {PIXELS!r}: binary data must be {size * 4} bytes ({size} FP32)")
        pixels = np.frombuffer(blob, dtype="<f4")
    else:
        pixels = _json_numbers(data, expected)
    if not np.isfinite(pixels).all():
        raise bad_request(f"input {PIXELS!r}: data must be finite numbers")
    return {"name": PIXELS, "datatype": "FP32", "shape": expected, "data": pixels}


def _json_numbers(data: Any, shape: list[int]) -> np.ndarray:
    """JSON tensor data, flat or nested as the shape, as flat float32."""
    wrong = bad_request(f"input {PIXELS!r}: data must be {math.prod(shape)} numbers, flat or nested as the shape")
    if not isinstance(data, list):
        raise wrong
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise wrong from None
    if array.dtype.kind not in "iuf" or array.size != math.prod(shape) or array.ndim not in (1, len(shape)):
        raise wrong
    if array.ndim != 1 and list(array.shape) != shape:
        raise wrong
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused as not finite
        return array.astype(np.float32).ravel()


def _requested_outputs(request: dict) -> dict[str, bool]:
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request("parameters must be an object")
    binary_default = _flag(parameters, "binary_data_output")
    requested = request.get("outputs")
    if requested is None:
        return {PROBABILITIES: binary_default, LABELS: binary_default}
    if not isinstance(requested, list) or not requested:
        raise bad_request("outputs must be a non-empty list")
    outputs = {}
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in (PROBABILITIES, LABELS) or name in outputs:
            raise bad_request(f"outputs name each of {PROBABILITIES!r} and {LABELS!r} at most once")
        output_parameters = output.get("parameters") or {}
        if not isinstance(output_parameters, dict):
            raise bad_request(f"output {name!r}: parameters must be an object")
        if "classification" in output_parameters:
            raise bad_request("the classification extension is not supported; the outputs already are a top-5")
        binary = output_parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise bad_request(f"output {name!r}: binary_data must be true or false")
        outputs[name] = binary
    return outputs


def _flag(parameters: dict, name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false")
    return value


# --- responses ----------------------------------------------------------------------------


def render_infer_response(model: str, infer: InferRequest, pool_body: bytes, pool: str) -> tuple[bytes, dict[str, str]]:
    """The client's answer from the pool's v2 outputs: the requested ones, in the requested
    encoding; the body and its headers (content type included)."""
    try:
        answer = orjson.loads(pool_body)
        produced = {output["name"]: output for output in answer["outputs"]}
        outputs, blobs = [], []
        for name, binary in infer.outputs.items():
            output = produced[name]
            entry = {"name": name, "datatype": output["datatype"], "shape": output["shape"]}
            if binary:
                blob = _binary_tensor(output["datatype"], output["data"])
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = output["data"]
            outputs.append(entry)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise GatewayError(
            502, "PoolError", f"pool {pool!r} answered the infer request in an unexpected form", pool=pool
        ) from None
    response: dict[str, Any] = {"model_name": model}
    if isinstance(answer.get("model_version"), str):
        response["model_version"] = answer["model_version"]
    if infer.id is not None:
        response["id"] = infer.id
    response["outputs"] = outputs
    header = orjson.dumps(response)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _binary_tensor(datatype: str, data: list) -> bytes:
    if datatype == "FP32":
        return np.asarray(data, dtype="<f4").tobytes()
    if datatype == "BYTES":
        return b"".join(len(item).to_bytes(4, "little") + item for item in (str(s).encode() for s in data))
    raise ValueError(f"no binary encoding for {datatype}")


# --- errors -------------------------------------------------------------------------------


def error_response(exc: GatewayError, request_id: str) -> Response:
    """The protocol's error shape, with the same status and headers as the TorchServe API's."""
    headers = {**exc.headers, "X-Request-ID": request_id}
    if exc.pool:
        headers["X-Tiergate-Pool"] = exc.pool
    return Response(orjson.dumps({"error": exc.message}), exc.status, headers=headers, media_type="application/json")


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise GatewayError(405, "MethodNotAllowed", f"use {allowed}", {"Allow": allowed})


def _json(payload: dict) -> Response:
    return Response(orjson.dumps(payload), 200, media_type="application/json")
