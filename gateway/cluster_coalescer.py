"""Coalescing across gateway replicas (`coalesce_scope: cluster`).

HAProxy spreads requests over the gateway replicas, so two identical requests usually
land on different ones and their singleflights never meet. Here each gateway replica
hands the admitted call to a coalescer deployment through a handle whose `session_id`
is the request's coalescing key; Ray Serve's consistent-hash request router sends every
call with that key to the same coalescer replica, which coalesces, routes and calls the
pool. The price is one handle hop per request (BENCHMARKS.md, "Coalescing").
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from .call import Call, Reply
from .coalesce import request_key
from .config import GatewayConfig, parse_config
from .errors import GatewayError
from .pipeline import Pipeline
from .pool_client import AiohttpTransport
from .run_settings import COALESCER_DEPLOYMENT
from .shares import ReplicaShares

# Monotonic clocks differ between nodes: a call crosses the hop with its time left and the
# (NTP-synced) wall-clock time it was sent. The gateway replica waits a little longer than
# the budget, so the coalescer's own answer, a 504 included, gets back first.
HOP_SLACK_S = 0.5


@serve.deployment(
    name=COALESCER_DEPLOYMENT,
    max_ongoing_requests=1024,
    ray_actor_options={"num_cpus": 0},
    request_router_config=RequestRouterConfig(
        request_router_class="ray.serve.experimental.consistent_hash_router:ConsistentHashRouter",
        # Strict affinity: a call that went to another replica could not meet its twins.
        request_router_kwargs={"num_fallback_replicas": 0},
    ),
)
class Coalescer:
    def __init__(self) -> None:
        self._pipeline: Pipeline | None = None
        self._draining: set[asyncio.Task] = set()  # referenced, or a task may be collected mid-drain
        self._shares = ReplicaShares()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse_config(user_config, "user_config")
        previous, self._pipeline = self._pipeline, Pipeline(config, AiohttpTransport(config.pools))
        self._shares.route_with(self._pipeline.router)
        if previous is not None:
            self._draining.add(asyncio.create_task(previous.close_when_idle()))
            self._draining = {task for task in self._draining if not task.done()}

    async def coalesce_then_route(self, call: Call, sent_at: float) -> tuple:
        """`call.deadline` is its time left when sent, at `sent_at` (time.time()); returns ("ok",
        Reply) or ("error", status, code, message, headers, pool)."""
        assert self._pipeline is not None
        # The wait in the handle's queue counts; a sender's clock ahead of ours counts as none.
        queued = min(max(0.0, time.time() - sent_at), call.deadline)
        local = dataclasses.replace(call, deadline=time.monotonic() + call.deadline - queued)
        pipeline = self._pipeline
        try:
            with pipeline.in_use():
                return ("ok", await pipeline.coalesce_then_route(local))
        except GatewayError as exc:
            return ("error", exc.status, exc.code, exc.message, exc.headers, exc.pool)


class RemoteCoalescer:
    """The gateway replica's side of the hop."""

    def __init__(self, config: GatewayConfig, handle: DeploymentHandle) -> None:
        self._config = config
        self._handle = handle

    async def __call__(self, call: Call) -> Reply:
        primary = self._config.tier_pools(call.tier, call.model)[0]
        key = request_key(call.model, call.version, primary, call.body)
        budget = call.time_left()
        if budget <= 0:
            raise GatewayError(504, "DeadlineExceeded", f"tier {call.tier!r} deadline passed")
        response = self._handle.options(session_id=key).coalesce_then_route.remote(
            dataclasses.replace(call, deadline=budget), time.time()
        )
        try:
            outcome = await asyncio.wait_for(response, budget + HOP_SLACK_S)
        except asyncio.TimeoutError:
            response.cancel()
            raise GatewayError(504, "DeadlineExceeded", f"tier {call.tier!r} deadline passed") from None
        if outcome[0] == "ok":
            return outcome[1]
        _, status, code, message, headers, pool = outcome
        raise GatewayError(status, code, message, headers, pool=pool)
