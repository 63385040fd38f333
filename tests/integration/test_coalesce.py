"""Coalescing on the real stack, counted at the TorchServe pool itself."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from .images import distinct_pngs
from .waiting import wait_for

PREDICT = "/predictions/resnet18"


def burst(stack, bodies: list[bytes], tier: str) -> list[httpx.Response]:
    """All bodies sent at the same instant, over connections opened beforehand."""
    start = threading.Barrier(len(bodies))

    def send(body: bytes) -> httpx.Response:
        with stack.client() as client:
            client.get("/healthz")
            start.wait()
            return client.post(PREDICT, content=body, headers={"X-SLA-Tier": tier})

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_identical_concurrent_requests_make_one_backend_inference(stack):
    body = distinct_pngs(1, seed=42)[0]
    before = stack.pool_metric("gpu", "ts_inference_requests_total")
    answers = burst(stack, [body] * 8, "premium")
    after = stack.pool_metric("gpu", "ts_inference_requests_total")
    assert [a.status_code for a in answers] == [200] * 8
    assert len({a.content for a in answers}) == 1
    assert after - before == 1
    assert sum(a.headers.get("x-tiergate-coalesced") == "1" for a in answers) == 7


def test_different_bodies_are_never_merged(stack):
    bodies = distinct_pngs(4, seed=43)
    before = stack.pool_metric("cpu", "ts_inference_requests_total")
    answers = burst(stack, bodies, "standard")
    after = stack.pool_metric("cpu", "ts_inference_requests_total")
    assert after - before == 4
    assert not any(a.headers.get("x-tiergate-coalesced") for a in answers)


def test_identical_requests_meet_across_gateway_replicas(stack):
    """Two gateway replicas behind HAProxy, coalescing in a keyed coalescer deployment."""
    stack.apply({**stack.config, "replicas": 2, "coalesce_scope": "cluster", "coalescer_replicas": 2})
    try:
        with stack.client() as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, 60)
        # A fresh gateway replica's first call through its coalescer handle is slow (the handle's
        # router starts up): a burst's requests there could arrive after their leader finished.
        burst(stack, distinct_pngs(8, seed=49), "standard")
        for seed in (50, 51, 52):  # several keys, so more than one coalescer replica is exercised
            body = distinct_pngs(1, seed=seed)[0]
            before = stack.pool_metric("cpu", "ts_inference_requests_total")
            answers = burst(stack, [body] * 8, "standard")
            after = stack.pool_metric("cpu", "ts_inference_requests_total")
            assert [a.status_code for a in answers] == [200] * 8
            assert after - before == 1
            assert sum(a.headers.get("x-tiergate-coalesced") == "1" for a in answers) == 7
    finally:
        stack.apply(stack.config)
