"""The request pipeline: admitted call → coalesce (singleflight, cache) → route (pool
choice, limits, breaker) → pool client, with the outcome recorded in metrics; an answer
is then offered to the shadow stage, which mirrors samples in the background.

Each stage is its own module with one small interface; this module only orders them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Awaitable, Callable

from . import metrics
from .call import Call, Reply
from .coalesce import ResponseCache, Singleflight, request_key
from .config import GatewayConfig
from .errors import GatewayError
from .pool_client import PoolClient, Transport
from .profiles import Profile, profile_for
from .route import Router
from .shadow import ShadowStage

READINESS_TTL_S = 1.0

Coalesce = Callable[[Call], Awaitable[Reply]]


class Pipeline:
    def __init__(self, config: GatewayConfig, transport: Transport, remote: Coalesce | None = None) -> None:
        """`remote`: where calls are coalesced and routed when that happens in another
        deployment (coalesce_scope: cluster); by default this pipeline does it itself."""
        self.config = config
        self.profiles: dict[str, Profile] = {name: profile_for(model) for name, model in config.models.items()}
        self.pools = PoolClient(config.pools, transport)
        self._remote = remote
        routing_replicas = config.coalescer_replicas if config.coalesce_scope == "cluster" else config.replicas
        self.router = Router(config, routing_replicas)
        self.flights: Singleflight[Reply] = Singleflight()
        self.caches = {
            name: ResponseCache(model.cache.ttl_s, model.cache.max_bytes)
            for name, model in config.models.items() if model.cache is not None
        }
        self.shadows = ShadowStage(config, self.pools, self.profiles)
        self._readiness: asyncio.Task | None = None
        self._readiness_at = 0.0
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(self, call: Call) -> Reply:
        started = time.perf_counter()
        pool, code, backend = metrics.UNKNOWN, 500, metrics.UNKNOWN
        try:
            reply = await (self._remote or self.coalesce_then_route)(call)
            pool, code, backend = reply.pool, 200, reply.inference.backend
            self.shadows.mirror(call, reply, time.perf_counter() - started)
            return reply
        except GatewayError as exc:
            code, pool = exc.status, exc.pool or pool
            exc.recorded = True
            raise
        except asyncio.CancelledError:  # the client went away (NGINX's 499), not a gateway failure
            code = 499
            raise
        finally:
            metrics.REQUESTS.labels(call.tier, pool, call.model, str(code), backend).inc()
            metrics.LATENCY.labels(call.tier, pool, call.model, str(code)).observe(
                time.perf_counter() - started
            )

    async def coalesce_then_route(self, call: Call) -> Reply:
        """Coalesce (singleflight, cache), then route to a pool."""
        cache = self.caches.get(call.model)
        coalesce = self.config.coalesce and self.config.models[call.model].coalesce
        if not coalesce and cache is None:
            return await self.router.dispatch(call, self.pools.infer)
        primary = self.router.pools_for(call.tier, call.model)[0]
        key = request_key(call.model, call.version, primary, call.body)
        if cache is not None:
            hit = cache.get(key)
            metrics.CACHE.labels(call.model, "hit" if hit else "miss").inc()
            if hit is not None:
                return dataclasses.replace(hit, cache="hit")
        if coalesce:
            # Followers wait on their leader's call, made under the leader's tier (priority,
            # shedding, deadline): only a request of the same tier may follow it.
            reply, followed = await self.flights.run(
                f"{key}~{call.tier}", call.deadline, lambda: self.router.dispatch(call, self.pools.infer),
                on_timeout=lambda: GatewayError(
                    504, "DeadlineExceeded", f"tier {call.tier!r} deadline passed waiting for an identical request"
                ),
            )
            if followed:
                metrics.COALESCED.labels(call.tier, call.model).inc()
                reply = dataclasses.replace(reply, coalesced=True)
        else:
            reply = await self.router.dispatch(call, self.pools.infer)
        if cache is not None:
            # Under the key of the pool that answered: a failover pool runs another variant,
            # whose answer must not be served later as the primary's.
            answered = key if reply.pool == primary else request_key(call.model, call.version, reply.pool, call.body)
            cache.put(answered, dataclasses.replace(reply, coalesced=False), len(reply.inference.body) + len(answered))
            reply = dataclasses.replace(reply, cache="miss")
        return reply

    def serving_pools(self, model: str) -> list[str]:
        """The pools some tier may send this model's calls to."""
        return sorted({
            pool for tier in self.config.tiers
            for pool in self.config.tier_pools(tier, model) + self.config.tier_spillover(tier, model)
        })

    async def readiness(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """The pools' and models' readiness (`check_readiness`), asked at most once a
        READINESS_TTL_S: /ping, /readyz and v2's ready endpoints take no key, and each check
        costs every pool a ping and a management describe per model. Callers meanwhile share
        the check in flight or its answer."""
        now = time.monotonic()
        if self._readiness is None or now - self._readiness_at >= READINESS_TTL_S:
            self._readiness, self._readiness_at = asyncio.ensure_future(self.check_readiness()), now
        return await asyncio.shield(self._readiness)  # a caller that goes away does not cancel the others' check

    async def check_readiness(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """For each pool a tier uses, None when TorchServe's ping says it is healthy, else why not;
        and per model "ready" when every pool serving it is and has a READY worker for it, else
        "not ready: " and why. (Shadow targets are not serving: their health never makes the
        gateway unready.)"""
        names = sorted({pool for model in self.config.models for pool in self.serving_pools(model)})
        pools = dict(zip(names, await asyncio.gather(*(self.pools.ping(name) for name in names))))
        # The ping does not see a model short of workers; the pool's management API, where the
        # config names it, does.
        asked = [(model, pool) for model in self.config.models for pool in self.serving_pools(model) if pools[pool] is None]
        answers = await asyncio.gather(*(self.pools.worker_check(pool, model) for model, pool in asked))
        problems: dict[str, list[str]] = {model: [] for model in self.config.models}
        for model in self.config.models:
            problems[model] += [f"pool {pool!r}: {pools[pool]}" for pool in self.serving_pools(model) if pools[pool]]
        for (model, pool), why in zip(asked, answers):
            if why is not None:
                problems[model].append(f"pool {pool!r}: {why}")
        models = {model: "not ready: " + "; ".join(why) if why else "ready" for model, why in problems.items()}
        return pools, models

    async def close_when_idle(self) -> None:
        """After a config reload: let in-flight calls finish on this pipeline, then close it."""
        await self._idle.wait()
        await self.shadows.close()  # shadow calls use the transport: before closing it
        await self.pools.transport.aclose()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held by whoever serves a request on this pipeline, from before its first await (before
        its body is read): a reload closes the pipeline only once nobody holds it."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()
