"""The HTTP surface: routing and error mapping for both APIs in one place.

The TorchServe-compatible inference API is rendered here; the Open Inference Protocol's
paths are handed to `gateway.v2`. Fronts only parse, render and render errors: admission
(gateway/admit.py), what a body means (the model's profile) and serving it (the pipeline)
are the same for both. Kept free of Ray so any ASGI host can serve it; `gateway.app`
wraps it in a Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from . import access_log, admit, metrics, openapi
from .admit import Admission
from .auth import KeyBook
from .call import Call
from .config import GatewayConfig
from .errors import GatewayError
from .pipeline import Coalesce, Pipeline
from .pool_client import Transport
from .pool_metrics import pool_exposition
from .responses import error_headers, served_headers
from .v2 import OpenInferenceFront

log = logging.getLogger("tiergate")

PREDICT = re.compile(r"^/predictions/([^/]+)(?:/([^/]+))?/?$")
# What the access log and tiergate_requests_total record for a client that went away before
# its answer (NGINX's code): not a gateway failure, so SLOs on 5xx are not burned by it.
CLIENT_CLOSED = 499


class HttpFront:
    def __init__(
        self, config: GatewayConfig, transport: Transport, remote: Coalesce | None = None, *, echo_request_id: bool = True
    ) -> None:
        """`echo_request_id`: add X-Request-ID to responses; off under Ray Serve, whose ingress
        already adds it (the same id: Ray's ingress puts it on the request when a client sends none)."""
        self.pipeline = Pipeline(config, transport, remote)
        self.admission = Admission(config, KeyBook(config.auth, config.tiers))
        self.v2 = OpenInferenceFront(self.pipeline, self.admission)
        self.openapi = orjson.dumps(openapi.document(config, keys_required=self.admission.keys.enabled))
        self._echo_request_id = echo_request_id
        self.config_digest = config.digest()

    async def handle(self, request: Request) -> Response:
        started, arrived = time.perf_counter(), time.monotonic()
        request_id = admit.request_id(request)
        v2 = self.v2.owns(request.scope["path"])
        try:
            with self.pipeline.in_use():
                response = await self._dispatch(request, request_id, arrived, v2)
        except GatewayError as exc:
            response = self._error(exc, v2)
        except asyncio.CancelledError:  # the client went away: log it as such, then let it end
            if self.pipeline.config.access_log:
                access_log.record(request, Response(status_code=CLIENT_CLOSED), request_id, time.perf_counter() - started)
            raise
        except Exception:  # a gateway bug: answer, log without the payload, keep serving
            log.exception("unhandled error for request %s", request_id)
            response = self._error(GatewayError(500, "InternalError", "internal gateway error"), v2)
        if self._echo_request_id:
            response.headers["X-Request-ID"] = request_id
        if self.pipeline.config.access_log:
            access_log.record(request, response, request_id, time.perf_counter() - started)
        return response

    def _error(self, exc: GatewayError, v2: bool) -> Response:
        if not exc.recorded:  # refused before the pipeline: admission, routing of paths
            metrics.REFUSALS.labels(str(exc.status), exc.code).inc()
        body = orjson.dumps({"error": exc.message}) if v2 else exc.body()
        return Response(body, exc.status, headers=error_headers(exc), media_type="application/json")

    async def _dispatch(self, request: Request, request_id: str, arrived: float, v2: bool) -> Response:
        path, method = request.scope["path"], request.method  # request.url would parse the whole URL
        if v2:
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
        admitted = await self.admission.admit(
            request, model, version, arrived, lambda req: self.pipeline.profiles[model].accept(admit.content_type(req))
        )
        try:
            pool_body = self.pipeline.profiles[model].admit(admitted.body, admitted.content)
            call = Call(model, version, admitted.tier, pool_body.body, request_id, admitted.deadline, pool_body.content_type)
            reply = await self.pipeline.infer(call)
        except GatewayError as exc:
            exc.headers.setdefault("X-Tiergate-Tier", admitted.tier)
            raise
        return Response(
            reply.inference.body, 200, headers=served_headers(reply, admitted.tier), media_type=reply.inference.content_type
        )

    async def _ready(self) -> Response:
        pools, models = await self.pipeline.readiness()
        failing = {pool: why for pool, why in pools.items() if why is not None}
        if failing or any(state != "ready" for state in models.values()):
            return _json(503, {"status": "not ready", "pools": failing, "models": models, "config": self.config_digest})
        return _json(200, {"status": "ready", "pools": sorted(pools), "models": models, "config": self.config_digest})


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise GatewayError(405, "MethodNotAllowed", f"use {allowed}", {"Allow": allowed})


def _json(status: int, payload: dict) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")
