"""The Ray Serve application: one plain deployment class in front of the HTTP surface.

Configuration arrives as `user_config` (the parsed gateway YAML), so a config change
is a `reconfigure` call on live replicas, not a redeploy.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from . import access_log
from .cluster_coalescer import Coalescer, RemoteCoalescer
from .config import GatewayConfig, parse_config
from .errors import GatewayError
from .http import HttpFront
from .pool_client import AiohttpTransport
from .run_settings import GATEWAY_DEPLOYMENT, serve_application
from .shares import ReplicaShares


@serve.deployment(
    name=GATEWAY_DEPLOYMENT,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    # tiergate writes its own access log (gateway/access_log.py); Serve's would be a second
    # line a request, on the hot path.
    logging_config={"enable_access_log": False},
)
class Gateway:
    def __init__(self, coalescer: DeploymentHandle | None = None) -> None:
        access_log.configure()
        self._coalescer = coalescer
        self._front: HttpFront | None = None
        self._draining: set[asyncio.Task] = set()
        self._shares = ReplicaShares()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse_config(user_config, "user_config")
        remote = RemoteCoalescer(config, self._coalescer) if self._coalescer is not None else None
        previous, self._front = self._front, HttpFront(
            config, AiohttpTransport(config.pools), remote, echo_request_id=False  # Serve's ingress adds it
        )
        if remote is None:  # this replica routes (otherwise the coalescer replicas do)
            self._shares.route_with(self._front.pipeline.router)
        if previous is not None:
            # Calls already admitted finish on the old pipeline; new ones use the new one.
            self._draining.add(asyncio.create_task(previous.pipeline.close_when_idle()))
            self._draining = {task for task in self._draining if not task.done()}

    async def __call__(self, request: Request) -> Response:
        if self._front is None:
            return Response(GatewayError(503, "NotConfigured", "gateway has no config yet").body(), 503, media_type="application/json")
        return await self._front.handle(request)


def application(config: GatewayConfig, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """The local stack's Serve application (run_settings.serve_application) with its replica counts."""
    app = serve_application(
        config, config.model_dump(mode="json"),
        gateway_options={"num_replicas": config.replicas}, coalescer_options={"num_replicas": config.coalescer_replicas},
    )  # fmt: skip
    if runtime_env:
        app["runtime_env"] = runtime_env
    return app


def app_builder(args: dict[str, Any]):
    """Entry point for Ray Serve config files (`import_path: gateway.app:app_builder`).

    The config comes only from the deployments' `user_config` in the Serve config (see
    run_settings.serve_application), so a config change reconfigures replicas instead of redeploying.
    """
    if args.get("coalesce_scope") == "cluster":
        return Gateway.bind(Coalescer.bind())
    return Gateway.bind()
