"""A circuit breaker per pool: stop sending to a pool that keeps failing, probe it back.

closed → open after `failures` consecutive failures, or when at least `error_rate` of
the last `window` calls failed (a pool failing every other call never strings enough
failures together); open → half-open after `open_s`; half-open lets one probe through:
success closes, failure re-opens. Overload answers (503) are not failures: a busy pool
is healthy.
"""

from __future__ import annotations

import time
from collections import deque
from enum import IntEnum


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    def __init__(
        self, failures: int, open_s: float, error_rate: float | None = None, window: int = 20,
        clock=time.monotonic,
    ) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._error_rate = error_rate
        self._recent: deque[bool] = deque(maxlen=window)  # True: that call failed
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self._state = State.CLOSED

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self._open_s:
            self._state = State.HALF_OPEN
            self._probe_started = None
        return self._state

    def allow(self) -> bool:
        """May a call go to this pool now? In half-open, only one probe at a time may
        (a probe that never reported back is replaced after `open_s`)."""
        state = self.state
        if state is State.CLOSED:
            return True
        now = self._clock()
        if state is State.HALF_OPEN and (
            self._probe_started is None or now - self._probe_started >= self._open_s
        ):
            self._probe_started = now
            return True
        return False

    def succeeded(self) -> None:
        if self._state is not State.CLOSED:
            self._recent.clear()  # a recovered pool starts with a clean record
        self._recent.append(False)
        self._failures = 0
        self._probe_started = None
        self._state = State.CLOSED

    def inconclusive(self) -> None:
        """A call that ended saying nothing of the pool's health (it ran out of its own time):
        counted neither way; in half-open, the next call may probe."""
        self._probe_started = None

    def failed(self) -> None:
        self._recent.append(True)
        self._failures += 1
        self._probe_started = None
        if self._state is State.HALF_OPEN or self._failures >= self._threshold or self._rate_exceeded():
            self._state = State.OPEN
            self._opened_at = self._clock()

    def _rate_exceeded(self) -> bool:
        recent = self._recent
        return (
            self._error_rate is not None
            and len(recent) == recent.maxlen
            and sum(recent) >= self._error_rate * len(recent)
        )
