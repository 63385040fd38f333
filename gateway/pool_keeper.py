"""Keeps the stack's local pools serving, as a process manager would.

A pool whose wrapper died, or whose Java frontend died under a live wrapper, is stopped
whole (its frontend and workers outlive the wrapper and keep its ports) and started again.
Restarts back off exponentially while a pool keeps dying, and each one is counted where an
operator looks: `tiergate status --json` and the gateway's /metrics.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily

from torchserve_backend.launcher import PoolProcess, PoolStartError

RESTART_BACKOFF_BASE_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0
# A pool that served this long before dying is restarted at once again, as after a first death
# (one that never came up keeps backing off).
STABLE_AFTER_S = 60.0
# Pools hold no accepted request by the time they are stopped (restart: the pool is dead;
# stop: the gateway has drained); this is only the frontend's own shutdown.
POOL_STOP_GRACE_S = 5.0


def restart_delay(deaths_in_a_row: int) -> float:
    """0 for a first death, then 1, 2, 4, … seconds, capped."""
    if deaths_in_a_row <= 1:
        return 0.0
    return min(RESTART_BACKOFF_CAP_S, RESTART_BACKOFF_BASE_S * 2 ** (deaths_in_a_row - 2))


class PoolKeeper:
    """One local pool: its process, the backend it reported, and its restarts."""

    def __init__(
        self,
        process: PoolProcess,
        stop: threading.Event,
        changed: Callable[[], None],
        announce: Callable[[str], None],
    ) -> None:
        self.process = process
        self.backend = "unknown"
        self.restarts = 0
        self._stop = stop
        self._changed = changed
        self._announce = announce
        self._lock = threading.Lock()  # one start or stop of the process at a time
        self._restarting = False
        self._ready_at: float | None = None  # since the process last came up; None while it has not
        self._deaths_in_a_row = 0

    @property
    def name(self) -> str:
        return self.process.spec.name

    def start(self) -> None:
        with self._lock:
            self.process.start()

    def wait_ready(self) -> None:
        self.backend = self.process.wait_ready()
        self._ready_at = time.monotonic()

    def check(self) -> None:
        """From the supervisor's loop: a dead pool is restarted in the background."""
        if self._restarting or self._stop.is_set() or self.process.running:
            return
        if self._ready_at is not None and time.monotonic() - self._ready_at >= STABLE_AFTER_S:
            self._deaths_in_a_row = 0
        self._deaths_in_a_row += 1
        self._ready_at = None
        self._restarting = True
        threading.Thread(target=self._restart, name=f"restart-{self.name}", daemon=True).start()

    def _restart(self) -> None:
        try:
            delay = restart_delay(self._deaths_in_a_row)
            self._announce(f"pool {self.name} exited; restarting it" + (f" in {delay:.0f}s" if delay else ""))
            with self._lock:
                self.process.stop(POOL_STOP_GRACE_S)
            if self._stop.wait(delay):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self.process.start()
                self.restarts += 1
            serves = self._serves()
            self._changed()  # the state names the new process once it serves, or has failed to
            if serves:
                self._announce(f"pool {self.name} is serving again ({self.backend})")
        finally:
            self._restarting = False

    def _serves(self) -> bool:
        try:
            self.wait_ready()
        except PoolStartError as exc:
            if not self._stop.is_set():
                self._announce(f"pool {self.name} failed to restart: {exc}")
                with self._lock:  # a half-started pool must not pass for a running one
                    self.process.stop(POOL_STOP_GRACE_S)
            return False
        return True

    def stop(self) -> list[int]:
        """Stop the pool for good (the supervisor's stop event is set); return survivors."""
        with self._lock:
            return self.process.stop(POOL_STOP_GRACE_S)


def write_restart_metrics(path: Path, keepers: list[PoolKeeper]) -> None:
    """The restart counts as a Prometheus text file, which the gateway's /metrics includes
    (the supervisor is not one of the gateway's processes, whose metrics it merges)."""
    restarts = CounterMetricFamily(
        "tiergate_pool_restarts", "Times the supervisor started a local pool again after it died", labels=["pool"]
    )
    for keeper in keepers:
        restarts.add_metric([keeper.name], keeper.restarts)
    registry = CollectorRegistry()
    registry.register(_Snapshot([restarts]))
    write_to_textfile(str(path), registry)


class _Snapshot:
    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return self.families
