"""Concurrent request loops against the real stack, bounded in time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from itertools import cycle

import httpx


@dataclass
class Outcome:
    status: int
    pool: str | None
    seconds: float
    at: float


@dataclass
class Load:
    """`clients` threads sending `bodies` in turn to `url` until stopped."""

    url: str
    bodies: list[bytes]
    headers: dict[str, str]
    clients: int = 1
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]

    def _run(self, index: int) -> None:
        bodies = cycle(self.bodies[index:] + self.bodies[:index])
        with httpx.Client(trust_env=False, timeout=60.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(self.url, content=next(bodies), headers=self.headers)
                    status, pool = response.status_code, response.headers.get("x-tiergate-pool")
                except httpx.HTTPError:
                    status, pool = 0, None
                self.outcomes.append(Outcome(status, pool, time.monotonic() - started, started))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts
