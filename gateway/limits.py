"""Per-pool concurrency limits with a bounded, priority-ordered wait queue.

A pool has `capacity` calls in flight from this replica at most (its share of the pool's
limit, which `resize` changes when the replicas are re-counted); further calls wait
in a queue of at most `queue_bound`, highest priority first. When the queue is full,
a higher-priority arrival evicts the lowest-priority waiter (which is shed at once
with 429, not left to time out); an arrival that outranks nobody is refused at once.
So a flood of low-priority work can never take a higher tier's place in the queue.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from dataclasses import dataclass, field

from .errors import GatewayError


def shed(pool: str, tier: str) -> GatewayError:
    return GatewayError(
        429, "Shed", f"pool {pool!r} is saturated; tier {tier!r} shed to protect higher tiers",
        {"Retry-After": "1"}, pool=pool,
    )


def saturated(pool: str) -> GatewayError:
    return GatewayError(
        503, "PoolSaturated", f"pool {pool!r} is saturated", {"Retry-After": "1"}, pool=pool,
    )


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]  # (-priority, arrival): smallest is served first
    tier: str = field(compare=False)
    sheddable: bool = field(compare=False)
    future: asyncio.Future = field(compare=False)


class PoolGate:
    def __init__(self, pool: str, capacity: int, queue_bound: int) -> None:
        self.pool = pool
        self.capacity = capacity
        self.queue_bound = queue_bound
        self.inflight = 0
        self._queue: list[_Waiter] = []
        self._arrivals = itertools.count()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def free_slots(self) -> int:
        return self.capacity - self.inflight - len(self._queue)

    def try_acquire(self, reserve: int = 0) -> bool:
        """Take a slot now only if more than `reserve` would stay free (for spillover)."""
        if self.free_slots() > reserve:
            self.inflight += 1
            return True
        return False

    async def acquire(self, tier: str, priority: int, sheddable: bool, deadline: float) -> None:
        """Wait for a slot until `deadline` (monotonic); raise 429/503 when refused, 504 at the deadline."""
        if self.try_acquire():
            return
        waiter = _Waiter((-priority, next(self._arrivals)), tier, sheddable, asyncio.get_running_loop().create_future())
        if len(self._queue) >= self.queue_bound:
            lowest = self._queue[-1] if self._queue else None  # none with queue_bound 0
            if lowest is None or lowest.rank <= waiter.rank or not lowest.sheddable:
                raise shed(self.pool, tier) if sheddable else saturated(self.pool)
            self._queue.pop()
            lowest.future.set_exception(shed(self.pool, lowest.tier))
        bisect.insort(self._queue, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), deadline - time.monotonic())
        except asyncio.TimeoutError:
            if waiter.future.done() and not waiter.future.exception():
                self.release()  # granted a slot at the very moment the deadline passed
            else:
                self._queue.remove(waiter)
            raise GatewayError(
                504, "DeadlineExceeded", f"tier {tier!r} deadline passed queued for pool {self.pool!r}",
                pool=self.pool,
            ) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and not waiter.future.exception():
                self.release()
            elif waiter in self._queue:
                self._queue.remove(waiter)
            raise

    def resize(self, capacity: int) -> None:
        """A new share of the pool's slots (the routing replicas were re-counted). Calls over a
        smaller share finish; no new one starts until the pool is back within it."""
        self.capacity = capacity
        self._grant()

    def release(self) -> None:
        self.inflight -= 1
        self._grant()

    def _grant(self) -> None:
        while self._queue and self.inflight < self.capacity:
            waiter = self._queue.pop(0)
            if waiter.future.done():
                continue
            self.inflight += 1
            waiter.future.set_result(None)
