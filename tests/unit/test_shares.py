"""Pool limits re-divided when Serve changes how many replicas route to the pools."""

import asyncio
import types

import pytest
from ray import serve

from gateway import metrics
from gateway.config import parse_config
from gateway.limits import PoolGate
from gateway.route import Router
from gateway.shares import ReplicaShares, serve_replicas

from .fakes import config_data

POOLS = {
    "gpu": {"url": "http://gpu.pool:8080", "max_concurrency": 8, "reserve": 4},
    "cpu": {"url": "http://cpu.pool:8090", "max_concurrency": 16},
}


def router(replicas: int = 1) -> Router:
    return Router(parse_config(config_data(pools=POOLS)), replicas)


def slots_metric(pool: str) -> float:
    return metrics.POOL_SLOTS.labels(pool)._value.get()


async def test_a_larger_share_lets_queued_calls_start():
    gate = PoolGate("cpu", 1, 4)
    assert gate.try_acquire()
    waiter = asyncio.create_task(gate.acquire("standard", 1, True, asyncio.get_running_loop().time() + 5))
    await asyncio.sleep(0.01)
    assert not waiter.done() and gate.queued == 1
    gate.resize(2)
    await asyncio.wait_for(waiter, 1)
    assert gate.inflight == 2 and gate.queued == 0


def test_a_smaller_share_lets_calls_finish_and_starts_none_until_within_it():
    gate = PoolGate("cpu", 3, 4)
    assert all(gate.try_acquire() for _ in range(3))
    gate.resize(1)
    assert gate.inflight == 3 and not gate.try_acquire()
    gate.release()
    gate.release()
    assert not gate.try_acquire()  # one in flight: the whole new share
    gate.release()
    assert gate.try_acquire()


async def test_shares_follow_the_replica_count():
    counts = iter([1, 4, 4, 3])
    seen = asyncio.Event()

    def count() -> int:
        value = next(counts, 3)
        if value == 3:
            seen.set()
        return value

    routing = router(replicas=1)
    follower = ReplicaShares(count, poll_s=0.01)
    follower.route_with(routing)
    await asyncio.wait_for(seen.wait(), 1)
    await asyncio.sleep(0.02)
    # 8 and 16 slots over 3 replicas, rounded up so each can call each pool; the reserve likewise
    assert {name: gate.capacity for name, gate in routing.gates.items()} == {"gpu": 3, "cpu": 6}
    assert routing.reserves == {"gpu": 2, "cpu": 0}
    assert slots_metric("gpu") == 3 and slots_metric("cpu") == 6
    follower._task.cancel()


async def test_a_new_config_gets_the_count_already_known():
    follower = ReplicaShares(lambda: 4, poll_s=60)
    follower.route_with(router())
    await asyncio.sleep(0.01)
    reloaded = router(replicas=1)  # a reload builds its router from the config's count
    follower.route_with(reloaded)
    assert reloaded.gates["cpu"].capacity == 4 and slots_metric("cpu") == 4
    follower._task.cancel()


async def test_the_shares_stay_when_serve_cannot_be_asked(caplog):
    answers = [2]

    def count() -> int:
        if not answers:
            raise ConnectionError("the Serve controller did not answer")
        return answers.pop()

    routing = router()
    follower = ReplicaShares(count, poll_s=0.01)
    follower.route_with(routing)
    await asyncio.sleep(0.05)
    assert routing.gates["cpu"].capacity == 8
    assert "could not count the gateway's replicas" in caplog.text
    follower._task.cancel()


@pytest.mark.parametrize(
    "states, expected",
    [({"RUNNING": 2, "STARTING": 1}, 3), ({"RUNNING": 2, "STOPPING": 1}, 2), ({"STARTING": 1}, 1), ({}, 1)],
)
def test_serve_replicas_counts_those_serving_or_about_to(monkeypatch, states, expected):
    context = types.SimpleNamespace(app_name="tiergate", deployment="tiergate")
    deployment = types.SimpleNamespace(replica_states=states)
    status = types.SimpleNamespace(
        applications={"tiergate": types.SimpleNamespace(deployments={"tiergate": deployment})}
    )
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    monkeypatch.setattr(serve, "status", lambda: status)
    assert serve_replicas() == expected
