"""Tiers as policy on the real stack: keys, failover with breakers, shedding, deadlines, reload."""

from __future__ import annotations

import copy
import os
import signal
import time

import pytest

from gateway.auth import digest

from .conftest import resnet18_only, stack_config
from .images import cat_jpeg, distinct_pngs
from .loads import Load
from .waiting import wait_for

PREDICT = "/predictions/resnet18"
SHOP, ETL = "shop-secret", "etl-secret"


def policy_config() -> dict:
    config = resnet18_only(stack_config(coalesce=False))
    config["auth"] = {"keys": [
        {"name": "shop", "sha256": digest(SHOP), "tiers": ["premium", "standard"]},
        {"name": "etl", "sha256": digest(ETL), "tiers": ["batch"], "default_tier": "batch"},
    ]}
    config["pools"]["gpu"].update(max_concurrency=2, max_queue=8, breaker_failures=2, breaker_open_s=2.0)
    config["pools"]["cpu"].update(max_concurrency=2, max_queue=4)
    config["tiers"] = {
        "premium": {"pools": ["gpu", "cpu"], "priority": 2, "deadline_ms": 20000, "sheddable": False},
        "standard": {"pools": ["cpu"], "priority": 1, "deadline_ms": 20000},
        "batch": {"pools": ["cpu"], "priority": 0, "deadline_ms": 30000},
    }
    return config


@pytest.fixture(scope="module")
def policy(stack):
    config = policy_config()
    stack.apply(config)
    yield config
    stack.apply(stack.config)


def breaker_openings(exposition: str) -> float:
    prefix = 'tiergate_breaker_opened_total{pool="gpu"} '
    return sum(float(line[len(prefix):]) for line in exposition.splitlines() if line.startswith(prefix))


def auth(key: str, tier: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if tier:
        headers["X-SLA-Tier"] = tier
    return headers


@pytest.mark.parametrize(
    "headers, status",
    [
        (auth(SHOP, "premium"), 200),
        (auth(SHOP, "standard"), 200),
        (auth(ETL), 200),
        (auth(ETL, "premium"), 403),
        (auth(SHOP, "batch"), 403),
        ({"X-SLA-Tier": "premium"}, 401),
        (auth("guess", "premium"), 401),
    ],
)
def test_key_tier_matrix(stack, policy, headers, status):
    with stack.client() as client:
        response = client.post(PREDICT, content=cat_jpeg(), headers=headers)
    assert response.status_code == status, response.text


def test_batch_flood_is_shed_while_premium_keeps_zero_errors(stack, policy):
    url = stack.url + PREDICT
    with Load(url, distinct_pngs(64, seed=1), auth(ETL), clients=16) as batch, \
         Load(url, distinct_pngs(16, seed=2), auth(SHOP, "premium"), clients=1) as premium, \
         Load(url, distinct_pngs(16, seed=3), auth(SHOP, "standard"), clients=1) as standard:
        time.sleep(8)
    assert premium.outcomes and premium.statuses() == {200: len(premium.outcomes)}
    assert batch.statuses().get(429, 0) > 0, batch.statuses()
    assert set(batch.statuses()) <= {200, 429}
    # standard outranks every batch waiter on the CPU pool: never refused to make room for batch.
    assert standard.outcomes and standard.statuses() == {200: len(standard.outcomes)}
    # A refusal is immediate, not a wait for the 30 s batch deadline.
    assert max(o.seconds for o in batch.outcomes if o.status == 429) < 2.0


def test_premium_survives_a_killed_gpu_pool_via_cpu(stack, policy):
    url = stack.url + PREDICT
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    with stack.client() as client:
        opened_before = breaker_openings(client.get("/metrics").text)
    with Load(url, distinct_pngs(16, seed=4), auth(SHOP, "premium"), clients=2) as premium:
        time.sleep(2)
        killed_at = time.monotonic()
        os.killpg(gpu["pid"], signal.SIGKILL)
        time.sleep(6)
    after = [o for o in premium.outcomes if o.at > killed_at + 1]
    # Calls in flight at the kill are re-run on the CPU pool: no premium request fails.
    assert premium.statuses() == {200: len(premium.outcomes)}
    # Served by the CPU pool right after the kill (the supervisor may bring the GPU pool back soon after).
    assert after and after[0].pool == "cpu" and "cpu" in {o.pool for o in after}
    with stack.client() as client:
        assert breaker_openings(client.get("/metrics").text) > opened_before

        def restarted():
            pool = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
            return pool["pid"] != gpu["pid"] and pool["state"] == "ready"

        wait_for(restarted, 180)
        # The breaker half-opens after 2 s and a successful probe closes it: premium is back on the GPU pool.
        wait_for(lambda: client.post(PREDICT, content=cat_jpeg(), headers=auth(SHOP, "premium")).headers.get("x-tiergate-pool") == "gpu", 30)
        assert 'tiergate_breaker_state{pool="gpu"} 0.0' in client.get("/metrics").text


def test_slow_pool_answers_504_at_the_tier_deadline(stack, policy):
    config = copy.deepcopy(policy)
    config["tiers"]["premium"] = {"pools": ["gpu"], "priority": 2, "deadline_ms": 15}
    stack.apply(config)
    try:
        with stack.client() as client:
            started = time.monotonic()
            response = client.post(PREDICT, content=distinct_pngs(1, seed=5)[0], headers=auth(SHOP, "premium"))
            elapsed = time.monotonic() - started
    finally:
        stack.apply(policy)
    assert response.status_code == 504 and response.json()["type"] == "DeadlineExceeded"
    assert elapsed < 1.0  # the deadline is 15 ms; the pool alone takes longer than that


def replica_pids(stack) -> set[int]:
    """The processes that wrote gateway metrics (the replicas: one file per process and kind)."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in (stack.state_dir / "metrics").glob("*.db")}


def test_reload_under_load_fails_no_request(stack, policy):
    url = stack.url + PREDICT
    moved = copy.deepcopy(policy)
    moved["tiers"]["standard"]["pools"] = ["gpu"]
    replicas = replica_pids(stack)
    with Load(url, distinct_pngs(16, seed=6), auth(SHOP, "standard"), clients=2) as load:
        time.sleep(1)
        stack.apply(moved)
        time.sleep(2)
        stack.apply(policy)
        time.sleep(1)
    assert load.statuses() == {200: len(load.outcomes)}
    assert {o.pool for o in load.outcomes} == {"cpu", "gpu"}  # the reload took effect
    # ... by `reconfigure` on the running replica: no new replica, so no gauge counted twice.
    assert replica_pids(stack) == replicas
    assert stack.metric("tiergate_pool_slots", pool="gpu") == policy["pools"]["gpu"]["max_concurrency"]


def test_premium_survives_a_hung_gpu_pool(stack, policy):
    """A pool that hangs (stopped, not dead) gets an attempt's budget, then the CPU pool the rest."""
    config = copy.deepcopy(policy)
    config["tiers"]["premium"]["attempt_timeout_ms"] = 1500
    stack.apply(config)
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    try:
        with Load(stack.url + PREDICT, distinct_pngs(8, seed=9), auth(SHOP, "premium"), clients=2) as premium:
            time.sleep(1)
            os.killpg(gpu["pid"], signal.SIGSTOP)
            time.sleep(6)
        assert premium.statuses() == {200: len(premium.outcomes)}
        assert {o.pool for o in premium.outcomes} == {"gpu", "cpu"}
        assert stack.metric("tiergate_retries_total", tier="premium", pool="gpu", reason="timeout") >= 1
    finally:
        os.killpg(gpu["pid"], signal.SIGCONT)
        stack.apply(policy)
    with stack.client() as client:  # the breaker's probe finds the pool back
        wait_for(lambda: client.post(PREDICT, content=cat_jpeg(), headers=auth(SHOP, "premium")).headers.get("x-tiergate-pool") == "gpu", 30)
