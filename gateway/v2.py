"""The Open Inference Protocol (KServe v2) REST surface, beside the TorchServe API.

KServe and Triton clients (tritonclient.http, kserve's REST client) speak it:

    GET  /v2                                      server metadata
    GET  /v2/health/live | /v2/health/ready       liveness; readiness (every serving pool pings)
    GET  /v2/models/{m}[/versions/{v}]            model metadata: the model's profile's inputs and outputs
    GET  /v2/models/{m}[/versions/{v}]/ready      model readiness (the pools serving it ping)
    POST /v2/models/{m}[/versions/{v}]/infer      inference

An infer request is admitted as on the TorchServe API (gateway/admit.py), decoded
(gateway/v2_codec.py), checked and put in the pool's form by the model's profile, and sent
through the same `Pipeline.infer`: tier routing, limits, coalescing, shadowing and metrics
all apply, and identical tensors coalesce however they were encoded. Errors on these paths
are `{"error": message}` (rendered by gateway/http.py) with the TorchServe API's statuses.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .admit import Admission
from .call import Call
from .errors import GatewayError, bad_request
from .pipeline import Pipeline
from .responses import served_headers
from .v2_codec import binary_header_length, parse_infer_request, render_infer_response

MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?/?$")
# Larger bodies are decoded off the event loop, so calls already admitted keep flowing
# (below it a thread hand-off costs more than the parse).
PARSE_IN_THREAD_BYTES = 64 * 1024
SERVER_METADATA = orjson.dumps(
    {"name": "tiergate", "version": importlib.metadata.version("tiergate"), "extensions": ["binary_tensor_data"]}
)


class OpenInferenceFront:
    """The /v2 paths, over the same admission and pipeline as the TorchServe API."""

    def __init__(self, pipeline: Pipeline, admission: Admission) -> None:
        self.pipeline = pipeline
        self.admission = admission

    @staticmethod
    def owns(path: str) -> bool:
        return path == "/v2" or path.startswith("/v2/")

    async def handle(self, request: Request, request_id: str, arrived: float) -> Response:
        """`arrived`: time.monotonic() when the request came in; its tier's deadline runs from then."""
        path, method = request.scope["path"].rstrip("/"), request.method
        match = MODEL_PATH.match(path)
        if match:
            model, version, action = match.groups()
            if action == "infer":
                _allow(method, "POST")
                return await self._infer(request, request_id, arrived, model, version)
            _allow(method, "GET")
            self.admission.identify_model(request, model, version)
            if action == "ready":
                await self._check_ready(model)
                return _json({"name": model, "ready": True})
            profile = self.pipeline.profiles[model]
            return _json({
                "name": model,
                "platform": "torchserve",
                "inputs": [schema.metadata() for schema in profile.inputs],
                "outputs": [schema.metadata() for schema in profile.outputs],
            })
        if path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            _allow(method, "GET")
            if path == "/v2":
                return Response(SERVER_METADATA, 200, media_type="application/json")
            if path == "/v2/health/ready":
                await self._check_ready(None)
                return _json({"ready": True})
            return _json({"live": True})
        raise GatewayError(404, "NotFound", "no such endpoint; inference is POST /v2/models/{model}/infer")

    async def _check_ready(self, model: str | None) -> None:
        _, models = await self.pipeline.readiness()
        failing = [f"{name}: {state}" for name, state in sorted(models.items()) if state != "ready" and model in (None, name)]
        if failing:
            raise GatewayError(503, "NotReady", "not ready; " + "; ".join(failing))

    async def _infer(self, request: Request, request_id: str, arrived: float, model: str, version: str | None) -> Response:
        admitted = await self.admission.admit(request, model, version, arrived, lambda req: binary_header_length(req.headers))
        profile = self.pipeline.profiles[model]
        limit = self.pipeline.config.body_limit(model)
        try:
            if len(admitted.body) > PARSE_IN_THREAD_BYTES:
                infer, pool_body = await asyncio.to_thread(_decode, profile, admitted.body, admitted.content)
            else:
                infer, pool_body = _decode(profile, admitted.body, admitted.content)
            if len(pool_body.body) > limit:  # e.g. binary FP32 grown into JSON
                raise GatewayError(413, "PayloadTooLarge", f"the tensors exceed the {limit}-byte limit as JSON")
            call = Call(model, version, admitted.tier, pool_body.body, request_id, admitted.deadline, pool_body.content_type)
            reply = await self.pipeline.infer(call)
            try:
                produced, answered_version = profile.to_v2(reply.inference.body)
            except (ValueError, KeyError, TypeError):
                raise GatewayError(
                    502, "PoolError", f"pool {reply.pool!r} answered the infer request in an unexpected form", pool=reply.pool
                ) from None
            content, headers = render_infer_response(model, answered_version or version, infer, produced)
        except GatewayError as exc:
            exc.headers.setdefault("X-Tiergate-Tier", admitted.tier)
            raise
        headers.update(served_headers(reply, admitted.tier))
        return Response(content, 200, headers=headers)


def _decode(profile, body: bytes, header_length: int | None):
    infer = parse_infer_request(body, header_length)
    if infer.outputs is not None:
        declared = [schema.name for schema in profile.outputs]
        unknown = [name for name in infer.outputs if name not in declared]
        if unknown:
            raise bad_request(f"this model's outputs are {declared}; unknown: {unknown}")
    return infer, profile.from_v2(infer.inputs)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise GatewayError(405, "MethodNotAllowed", f"use {allowed}", {"Allow": allowed})


def _json(payload: dict) -> Response:
    return Response(orjson.dumps(payload), 200, media_type="application/json")
