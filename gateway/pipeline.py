"""The request pipeline: admitted call → route → pool client → metrics.

Each stage is its own module with one small interface; this module only orders them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from . import metrics
from .admit import Call
from .config import GatewayConfig
from .errors import GatewayError
from .pool_client import (
    Inference,
    PoolRequest,
    PoolTimeout,
    PoolUnreachable,
    Transport,
    read_inference,
)
from .route import Router


@dataclass(frozen=True, slots=True)
class Reply:
    inference: Inference
    pool: str


class Pipeline:
    def __init__(self, config: GatewayConfig, transport: Transport) -> None:
        self.config = config
        self._transport = transport
        self._router = Router(config)

    async def infer(self, call: Call) -> Reply:
        started = time.perf_counter()
        pool, code, backend = metrics.UNKNOWN, 500, metrics.UNKNOWN
        try:
            reply = await self._route(call)
            pool, code, backend = reply.pool, 200, reply.inference.backend
            return reply
        except GatewayError as exc:
            code, pool = exc.status, exc.pool or pool
            raise
        finally:
            metrics.REQUESTS.labels(call.tier, pool, call.model, str(code), backend).inc()
            metrics.LATENCY.labels(call.tier, pool, call.model, str(code)).observe(
                time.perf_counter() - started
            )

    async def _route(self, call: Call) -> Reply:
        unreachable: list[str] = []
        for pool in self._router.plan(call.tier):
            try:
                return Reply(await self._call_pool(pool, call), pool)
            except PoolUnreachable:
                unreachable.append(pool)
        raise GatewayError(
            502, "PoolUnavailable",
            f"no pool for tier {call.tier!r} is reachable ({', '.join(unreachable)})",
            pool=unreachable[-1],
        )

    async def _call_pool(self, pool: str, call: Call) -> Inference:
        time_left = call.time_left()
        if time_left <= 0:
            raise _deadline_exceeded(call, pool)
        request = PoolRequest(
            "POST",
            self.config.pools[pool].url + call.path,
            timeout_s=time_left,
            body=call.body,
            headers={"content-type": "application/octet-stream", "x-request-id": call.request_id},
        )
        inflight = metrics.POOL_INFLIGHT.labels(pool)
        inflight.inc()
        try:
            response = await self._transport.send(pool, request)
        except PoolTimeout:
            raise _deadline_exceeded(call, pool) from None
        finally:
            inflight.dec()
        return read_inference(pool, response)

    async def readiness(self) -> dict[str, str | None]:
        """For each pool, None when it answers TorchServe's ping healthy, else why not."""
        names = list(self.config.pools)
        answers = await asyncio.gather(*(self._ping(name) for name in names))
        return dict(zip(names, answers))

    async def _ping(self, pool: str) -> str | None:
        request = PoolRequest("GET", self.config.pools[pool].url + "/ping", timeout_s=1.0)
        try:
            response = await self._transport.send(pool, request)
        except (PoolUnreachable, PoolTimeout) as exc:
            return str(exc)
        return None if response.status == 200 else f"ping answered HTTP {response.status}"

    async def close(self) -> None:
        await self._transport.aclose()


def _deadline_exceeded(call: Call, pool: str) -> GatewayError:
    return GatewayError(
        504, "DeadlineExceeded", f"tier {call.tier!r} deadline passed waiting for pool {pool!r}", pool=pool
    )
