"""Restarting a dying pool with backoff, and counting its restarts where /metrics shows them."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from gateway import pool_keeper
from gateway.metrics import SUPERVISOR_METRICS_FILE, render
from gateway.pool_keeper import PoolKeeper, restart_delay, write_restart_metrics
from torchserve_backend.launcher import PoolStartError


def test_restart_delays_grow_exponentially_and_are_capped():
    assert [restart_delay(deaths) for deaths in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]


class DyingPool:
    """A pool process that never comes up: every start is followed by a failed readiness."""

    def __init__(self) -> None:
        self.spec = SimpleNamespace(name="gpu")
        self.running = False
        self.starts: list[float] = []

    def start(self) -> None:
        self.starts.append(time.monotonic())

    def wait_ready(self) -> str:
        raise PoolStartError("exited during start-up")

    def stop(self, grace_s: float) -> list[int]:
        return []


def test_a_pool_that_keeps_dying_is_restarted_with_growing_delays_and_each_restart_counted(monkeypatch):
    monkeypatch.setattr(pool_keeper, "RESTART_BACKOFF_BASE_S", 0.1)
    monkeypatch.setattr(pool_keeper, "STABLE_AFTER_S", 0.3)  # never reached: the pool never came up
    process, stop, changes = DyingPool(), threading.Event(), []
    keeper = PoolKeeper(process, stop, lambda: changes.append(keeper.restarts), lambda line: None)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        keeper.check()
        time.sleep(0.02)
    stop.set()
    gaps = [later - earlier for earlier, later in zip(process.starts, process.starts[1:])]
    # Delays of 0, 0.1, 0.2, 0.4, 0.8 s: five starts in 2 s, where a loop would make ~100.
    assert 4 <= len(process.starts) <= 6, gaps
    assert all(later > earlier * 1.5 for earlier, later in zip(gaps[1:], gaps[2:])), gaps
    assert keeper.restarts == len(process.starts) and changes[-1] == keeper.restarts


def test_restart_counts_reach_the_gateways_metrics(tmp_path, monkeypatch):
    keepers = [SimpleNamespace(name="gpu", restarts=2), SimpleNamespace(name="cpu", restarts=0)]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert b"tiergate_pool_restarts" not in render()[0]  # no supervisor (KubeRay): no series
    write_restart_metrics(tmp_path / SUPERVISOR_METRICS_FILE, keepers)
    exposition = render()[0].decode()
    assert 'tiergate_pool_restarts_total{pool="gpu"} 2.0' in exposition
    assert 'tiergate_pool_restarts_total{pool="cpu"} 0.0' in exposition
