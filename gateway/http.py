"""The HTTP surface: TorchServe-compatible inference plus health, readiness and metrics.

Kept free of Ray so that it can be served by any ASGI host; `gateway.app` wraps it in
a Ray Serve deployment.
"""

from __future__ import annotations

import logging
import re
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from . import access_log, admit, metrics, openapi
from .auth import KeyBook, authorize
from .config import GatewayConfig
from .errors import GatewayError
from .pipeline import Coalesce, Pipeline
from .pool_client import Transport
from .pool_metrics import pool_exposition
from .v2 import OpenInferenceFront

log = logging.getLogger("tiergate")

PREDICT = re.compile(r"^/predictions/([^/]+)(?:/([^/]+))?/?$")


class HttpFront:
    def __init__(self, config: GatewayConfig, transport: Transport, remote: Coalesce | None = None) -> None:
        self.keys = KeyBook(config.auth, config.tiers)
        self.pipeline = Pipeline(config, transport, remote)
        self.v2 = OpenInferenceFront(self.pipeline, self.keys)
        self.openapi = orjson.dumps(openapi.document(config, keys_required=self.keys.enabled))

    async def handle(self, request: Request) -> Response:
        started, arrived = time.perf_counter(), time.monotonic()
        request_id = admit.request_id(request)
        try:
            with self.pipeline.in_use():
                response = await self._dispatch(request, request_id, arrived)
        except GatewayError as exc:
            response = error_response(exc, request_id)
        except Exception:  # a gateway bug: answer, log without the payload, keep serving
            log.exception("unhandled error for request %s", request_id)
            response = error_response(GatewayError(500, "InternalError", "internal gateway error"), request_id)
        if self.pipeline.config.access_log:
            access_log.record(request, response, request_id, time.perf_counter() - started)
        return response

    async def _dispatch(self, request: Request, request_id: str, arrived: float) -> Response:
        path, method = request.scope["path"], request.method  # request.url would parse the whole URL
        if path == "/v2" or path.startswith("/v2/"):  # Open Inference Protocol, with its own error shape
            return await self.v2.handle(request, request_id, arrived)
        match = PREDICT.match(path)
        if match:
            _allow(method, "POST")
            return await self._predict(request, request_id, arrived, match.group(1), match.group(2))
        if path == "/healthz":
            _allow(method, "GET")
            return _json(200, {"status": "alive"})
        if path == "/readyz":
            _allow(method, "GET")
            return await self._ready()
        if path == "/metrics":
            _allow(method, "GET")
            body, content_type = metrics.render()
            pools = await pool_exposition(self.pipeline.config, self.pipeline.pools)
            return Response(body + pools, 200, media_type=content_type)
        if path == "/openapi.json":
            _allow(method, "GET")
            return Response(self.openapi, 200, media_type="application/json")
        raise GatewayError(404, "NotFound", "no such endpoint; inference is POST /predictions/{model}")

    async def _predict(
        self, request: Request, request_id: str, arrived: float, model: str, version: str | None
    ) -> Response:
        config = self.pipeline.config
        caller = self.keys.identify(request.headers.get("authorization"))
        admit.check_model(config, model, version)
        tier = admit.resolve_tier(config, request, caller.default_tier if caller else None)
        authorize(caller, tier)
        admit.check_content_type(request)
        body = await admit.read_body(request, config.max_body_bytes)
        admit.check_image(body)
        call = admit.Call(
            model=model,
            version=version,
            tier=tier,
            body=body,
            request_id=request_id,
            deadline=arrived + config.tiers[tier].deadline_ms / 1000,  # the upload counts too
        )
        try:
            reply = await self.pipeline.infer(call)
        except GatewayError as exc:
            exc.headers.setdefault("X-Tiergate-Tier", tier)
            raise
        return Response(
            reply.inference.body, 200, headers=reply.headers(tier, request_id), media_type=reply.inference.content_type
        )

    async def _ready(self) -> Response:
        problems = await self.pipeline.readiness()
        failing = {pool: why for pool, why in problems.items() if why is not None}
        if failing:
            return _json(503, {"status": "not ready", "pools": failing})
        return _json(200, {"status": "ready", "pools": sorted(problems)})


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise GatewayError(405, "MethodNotAllowed", f"use {allowed}", {"Allow": allowed})


def _json(status: int, payload: dict) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def error_response(exc: GatewayError, request_id: str) -> Response:
    headers = {**exc.headers, "X-Request-ID": request_id}
    if exc.pool:
        headers["X-Tiergate-Pool"] = exc.pool
    return Response(exc.body(), exc.status, headers=headers, media_type="application/json")
