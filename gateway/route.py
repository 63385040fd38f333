"""Routing: which pool serves a call, given tiers, capacity and pool health.

For a tier, the pools in `pools` are tried in order, skipping any whose breaker is
open; a pool that refuses the connection, drops it mid-call, fails it (5xx) or does not
answer within its attempt's budget hands the call to the next one (never twice to the
same pool, always within the deadline). While a later pool could still take the call
over, one attempt may use only `attempt_timeout_ms` of the time left (Envoy's
per-try timeout), so a pool that hangs leaves the next one time to answer. A timeout
counts against a pool's breaker only when the call had `breaker_min_timeout_s` to run
(a tier with a tight deadline must not open the breaker on a healthy pool for all) and
the timer fired on time (fired late, this process was stalled, not the pool).
Re-running a dropped call elsewhere is safe because an inference is a pure function of
its body: the dead pool's half-done work changes nothing. When the tier's pool
has no free slot, a `spillover` pool with headroom beyond its reserve takes the call
instead of queueing it. Slots are held through `limits.PoolGate`.
"""

from __future__ import annotations

import math
import time
from typing import Awaitable, Callable

from . import metrics
from .breaker import Breaker, State
from .config import GatewayConfig
from .errors import GatewayError
from .limits import PoolGate
from .call import Call, Inference, Reply
from .pool_client import PoolDropped, PoolTimeout, PoolUnreachable

Send = Callable[[str, Call, float], Awaitable[Inference]]  # (pool, call, seconds it may take)
# A timeout that fires this much later than asked means this process was not running (stopped,
# starved): the pool may have answered long before, so the timeout says nothing about it.
STALLED_S = 0.5


class Router:
    def __init__(self, config: GatewayConfig, replicas: int) -> None:
        """`replicas`: how many processes route to the pools, each holding its share of the limits."""
        self.config = config
        # Per tier and model, the tier's pools and spillover pools that serve the model.
        self._routes = {
            (tier, model): (config.tier_pools(tier, model), config.tier_spillover(tier, model))
            for tier in config.tiers for model in config.models
        }
        self._attempt_s = {
            (tier, model): _attempt_timeout_s(config.tiers[tier].deadline_ms, config.tiers[tier].attempt_timeout_ms, pools)
            for (tier, model), (pools, _) in self._routes.items()
        }
        self.gates = {name: PoolGate(name, 0, pool.max_queue) for name, pool in config.pools.items()}
        self.reserves: dict[str, int] = {}
        self.divide(replicas)
        self.breakers = {
            name: Breaker(pool.breaker_failures, pool.breaker_open_s, pool.breaker_error_rate, pool.breaker_window)
            for name, pool in config.pools.items()
        }

    def divide(self, replicas: int) -> None:
        """Hold this process's share of each pool's limits when `replicas` processes route to the
        pools. Rounded up, so every replica can call every pool (the pools may see up to
        `replicas - 1` calls more than `max_concurrency`)."""
        for name, pool in self.config.pools.items():
            self.gates[name].resize(math.ceil(pool.max_concurrency / replicas))
            # divided like the slots it is kept from: the whole reserve on each replica's share
            # of the slots would leave no headroom to spill into
            self.reserves[name] = math.ceil(pool.reserve / replicas)

    def pools_for(self, tier: str, model: str) -> list[str]:
        """The tier's pools serving the model, primary first."""
        return self._routes[tier, model][0]

    async def dispatch(self, call: Call, send: Send) -> Reply:
        tier = self.config.tiers[call.tier]
        pools, spillovers = self._routes[call.tier, call.model]
        last_error: GatewayError | None = None
        tried: set[str] = set()  # a spillover pool may also be listed in `pools`
        for index, pool in enumerate(pools):
            if pool in tried or self.breakers[pool].state is State.OPEN:
                continue
            spillover = [other for other in spillovers if other not in tried]
            target = await self._take_slot(call, pool, spillover, tier.priority, tier.sheddable)
            tried.add(target)
            successor = any(
                later not in tried and self.breakers[later].state is not State.OPEN for later in pools[index + 1:]
            )
            budget = min(call.time_left(), self._attempt_s[call.tier, call.model]) if successor else call.time_left()
            try:
                return Reply(await self._send(call, target, send, budget, successor), target)
            except _TryNext as retry:
                last_error = retry.error
                metrics.RETRIES.labels(call.tier, target, retry.reason).inc()
        if last_error is not None:
            raise last_error
        raise GatewayError(
            503, "PoolUnavailable",
            f"every pool for tier {call.tier!r} is failing; retry later",
            {"Retry-After": str(math.ceil(max(self.config.pools[p].breaker_open_s for p in pools)))},
        )

    async def _take_slot(
        self, call: Call, pool: str, spillover: list[str], priority: int, sheddable: bool
    ) -> str:
        """Hold a slot on `pool`, or on a spillover pool with headroom; return which."""
        gate = self.gates[pool]
        if gate.try_acquire():
            return pool
        for other in spillover:
            if other != pool and self.breakers[other].state is State.CLOSED and self.gates[other].try_acquire(
                reserve=self.reserves[other]
            ):
                metrics.SPILLOVERS.labels(call.tier, pool, other).inc()
                return other
        queued_at = time.perf_counter()
        self._observe(gate)
        try:
            await gate.acquire(call.tier, priority, sheddable, call.deadline)
        except GatewayError as exc:
            if exc.status in (429, 503):
                metrics.SHED.labels(call.tier, pool).inc()
            raise
        finally:
            self._observe(gate)
        metrics.QUEUE_WAIT.labels(call.tier, pool).observe(time.perf_counter() - queued_at)
        return pool

    async def _send(self, call: Call, pool: str, send: Send, budget: float, successor: bool) -> Inference:
        """One attempt on `pool`, of at most `budget` seconds; `successor`: a later pool may take
        the call over if this one fails (raise _TryNext then)."""
        breaker, gate = self.breakers[pool], self.gates[pool]
        self._observe(gate)
        try:
            if not breaker.allow():  # half-open, its one probe already out
                raise _TryNext("breaker_open", GatewayError(
                    503, "PoolUnavailable", f"pool {pool!r} is being probed after failing; retry later",
                    {"Retry-After": str(math.ceil(self.config.pools[pool].breaker_open_s))}, pool=pool,
                ))
            sent_at = time.monotonic()
            try:
                inference = await send(pool, call, budget)
            except PoolUnreachable as exc:
                self._failed(pool)
                raise _TryNext("unreachable", _unavailable(pool, str(exc))) from None
            except PoolDropped as exc:
                self._failed(pool)
                raise _TryNext("dropped", GatewayError(502, "PoolDropped", str(exc), pool=pool)) from None
            except PoolTimeout:
                stalled = time.monotonic() - sent_at - budget > STALLED_S
                if budget >= self.config.pools[pool].breaker_min_timeout_s and not stalled:
                    self._failed(pool)
                else:  # the tier's deadline was tight, or this process stalled: says nothing about the pool
                    breaker.inconclusive()
                if successor and call.time_left() > 0:
                    raise _TryNext("timeout", GatewayError(
                        504, "DeadlineExceeded", f"pool {pool!r} did not answer within its {budget:.2f}s attempt",
                        pool=pool,
                    )) from None
                raise GatewayError(
                    504, "DeadlineExceeded", f"tier {call.tier!r} deadline passed waiting for pool {pool!r}",
                    pool=pool,
                ) from None
            except GatewayError as exc:
                if exc.status == 503:  # busy, not broken: let the next pool try
                    breaker.succeeded()
                    raise _TryNext("overloaded", exc) from None
                if exc.status >= 500:  # the pool's failure (an error, a refused token), not the call's
                    self._failed(pool)
                    raise _TryNext("error", exc) from None
                breaker.succeeded()
                raise
            breaker.succeeded()
            return inference
        finally:
            gate.release()
            self._observe(gate)
            metrics.BREAKER_STATE.labels(pool).set(int(breaker.state))

    def _failed(self, pool: str) -> None:
        breaker = self.breakers[pool]
        was_open = breaker.state is State.OPEN
        breaker.failed()
        if not was_open and breaker.state is State.OPEN:
            metrics.BREAKER_OPENED.labels(pool).inc()
        metrics.BREAKER_STATE.labels(pool).set(int(breaker.state))

    @staticmethod
    def _observe(gate: PoolGate) -> None:
        metrics.POOL_INFLIGHT.labels(gate.pool).set(gate.inflight)
        metrics.POOL_QUEUED.labels(gate.pool).set(gate.queued)


class _TryNext(Exception):
    def __init__(self, reason: str, error: GatewayError) -> None:
        self.reason = reason
        self.error = error


def _attempt_timeout_s(deadline_ms: int, attempt_timeout_ms: int | None, pools: list[str]) -> float:
    """How long one attempt may take while a later pool could still take the call over."""
    return (attempt_timeout_ms if attempt_timeout_ms is not None else deadline_ms / max(len(pools), 1)) / 1000


def _unavailable(pool: str, why: str) -> GatewayError:
    return GatewayError(502, "PoolUnavailable", f"pool {pool!r} unavailable: {why}", pool=pool)
