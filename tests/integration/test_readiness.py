"""Issue 18, item 8 on the real stack: /readyz sees a model short of workers, and the local
pools' management API wants TorchServe's key (it can scale workers and load models)."""

from __future__ import annotations

import os
import signal

import httpx

from .conftest import pool_key
from .waiting import wait_for


def scale(stack, pool: dict, model: str, workers: int, headers: dict[str, str]) -> httpx.Response:
    port = stack.config["pools"][pool["name"]]["local"]["management_port"]
    return httpx.put(
        f"http://127.0.0.1:{port}/models/{model}", params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
        headers=headers, trust_env=False, timeout=120,
    )


def test_the_management_api_wants_the_pools_key(stack):
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    refused = scale(stack, gpu, "digits", 0, {})
    assert refused.status_code in (400, 401, 403) and "Token" in refused.text, refused.text
    with stack.client() as client:
        assert client.get("/readyz").status_code == 200  # nothing changed


def test_readyz_is_not_ready_while_a_model_is_short_of_workers(stack):
    """A model's worker killed: until TorchServe has restarted it, the pool is "Partial Healthy"
    (its ping still answers 200), and the gateway says which pool and models are not ready."""
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    port = stack.config["pools"]["gpu"]["local"]["management_port"]
    describe = httpx.get(f"http://127.0.0.1:{port}/models/digits", headers=pool_key(gpu, "management"), trust_env=False, timeout=30)
    worker = int(describe.json()[0]["workers"][0]["pid"])
    seen = []
    with stack.client() as client:
        assert client.get("/readyz").status_code == 200
        os.kill(worker, signal.SIGKILL)

        def not_ready() -> bool:
            answer = client.get("/readyz")
            seen.append(answer)
            return answer.status_code == 503

        wait_for(not_ready, 30, interval_s=0.1)
        wait_for(lambda: client.get("/readyz").status_code == 200, 120)
    why = seen[-1].json()
    assert "Partial Healthy" in why["pools"]["gpu"]
    assert why["models"]["digits"].startswith("not ready: pool 'gpu': ping says Partial Healthy")
