"""Coalescing: identical concurrent requests share one backend call; identical later
ones may be answered from a small content-hash cache.

Two requests are identical when they ask the same model and version, of the same
pool (so the same model variant), with byte-identical bodies; only those of one tier share
a call, which runs under the leader's tier. The first becomes the leader and makes the call; followers wait for its outcome, each within its own
deadline, and get the same answer or the same error (no thundering retry). The call
runs in its own task, so a leader whose client goes away does not fail its followers.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

from .errors import GatewayError

T = TypeVar("T")
LEADER_GRACE_S = 0.25


def request_key(model: str, version: str | None, pool: str, body: bytes) -> str:
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    return f"{model}/{version or ''}@{pool}#{digest}"


class Singleflight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(
        self, key: str, deadline: float, call: Callable[[], Awaitable[T]], on_timeout: Callable[[], GatewayError]
    ) -> tuple[T, bool]:
        """The outcome of `call` for `key`, and whether this request followed another's call."""
        flight = self._flights.get(key)
        follower = flight is not None
        if flight is None:
            flight = asyncio.create_task(call())
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
            # When every waiter gave up first, nobody reads the outcome: read it here, so
            # an overloaded replica doesn't log "exception was never retrieved" per flight.
            flight.add_done_callback(lambda done: done.cancelled() or done.exception())
        # The leader's call keeps the deadline itself and fails naming the pool that made it
        # late; the grace keeps this timer from firing first with a vaguer error.
        grace = 0.0 if follower else LEADER_GRACE_S
        try:
            result = await asyncio.wait_for(asyncio.shield(flight), deadline - time.monotonic() + grace)
        except asyncio.TimeoutError:
            raise on_timeout() from None
        return result, follower


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    value: T
    size: int
    expires: float


class ResponseCache(Generic[T]):
    """Byte-bounded LRU with a TTL; only successful answers are ever stored."""

    def __init__(self, ttl_s: float, max_bytes: int, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: str, value: T, size: int) -> None:
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(value, size, self._clock() + self.ttl_s)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        self.bytes -= self._entries.pop(key).size
