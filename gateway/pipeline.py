"""The request pipeline: admitted call → route (pool choice, limits, breaker) → pool
client, with the outcome recorded in metrics.

Each stage is its own module with one small interface; this module only orders them.
"""

from __future__ import annotations

import asyncio
import time

from . import metrics
from .admit import Call
from .config import GatewayConfig
from .errors import GatewayError
from .pool_client import PoolClient, Transport
from .route import Reply, Router


class Pipeline:
    def __init__(self, config: GatewayConfig, transport: Transport) -> None:
        self.config = config
        self.pools = PoolClient(config.pools, transport)
        self.router = Router(config)
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(self, call: Call) -> Reply:
        started = time.perf_counter()
        pool, code, backend = metrics.UNKNOWN, 500, metrics.UNKNOWN
        self._enter()
        try:
            reply = await self.router.dispatch(call, self.pools.infer)
            pool, code, backend = reply.pool, 200, reply.inference.backend
            return reply
        except GatewayError as exc:
            code, pool = exc.status, exc.pool or pool
            raise
        finally:
            self._leave()
            metrics.REQUESTS.labels(call.tier, pool, call.model, str(code), backend).inc()
            metrics.LATENCY.labels(call.tier, pool, call.model, str(code)).observe(
                time.perf_counter() - started
            )

    async def readiness(self) -> dict[str, str | None]:
        """For each pool, None when it answers TorchServe's ping healthy, else why not."""
        names = list(self.config.pools)
        answers = await asyncio.gather(*(self.pools.ping(name) for name in names))
        return dict(zip(names, answers))

    async def close_when_idle(self) -> None:
        """After a config reload: let in-flight calls finish on this pipeline, then close it."""
        await self._idle.wait()
        await self.pools.transport.aclose()

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()
