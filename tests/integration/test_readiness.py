"""Issue 18, item 8 on the real stack: /readyz sees a model without a worker (through the pool's
management API; TorchServe's ping does not), and that API wants TorchServe's key (it can scale
workers and load models)."""

from __future__ import annotations

import httpx

from .conftest import pool_key
from .waiting import wait_for


def scale(stack, pool: dict, model: str, workers: int, headers: dict[str, str], synchronous: bool = True) -> httpx.Response:
    port = stack.config["pools"][pool["name"]]["local"]["management_port"]
    return httpx.put(
        f"http://127.0.0.1:{port}/models/{model}",
        params={"min_worker": workers, "max_worker": workers, "synchronous": str(synchronous).lower()},
        headers=headers, trust_env=False, timeout=120,
    )


def test_the_management_api_wants_the_pools_key(stack):
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    refused = scale(stack, gpu, "digits", 0, {})
    assert refused.status_code in (400, 401, 403) and "Token" in refused.text, refused.text
    with stack.client() as client:
        assert client.get("/readyz").status_code == 200  # nothing changed


def test_readyz_is_not_ready_while_a_model_has_no_worker(stack):
    """Scaled to zero workers, a model leaves TorchServe's ping Healthy; the gateway asks the
    pool's management API (describe) and names the model."""
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    with stack.client() as client:
        assert client.get("/readyz").status_code == 200
        assert scale(stack, gpu, "digits", 0, pool_key(gpu, "management")).status_code == 200
        try:
            # A replica asks the pools at most once a second: the answer before the scale may stand that long.
            ready = wait_for(lambda: (answer := client.get("/readyz")).status_code == 503 and answer, 5)
            assert ready.json()["models"]["digits"] == "not ready: pool 'gpu': no READY worker for model 'digits'"
            assert ready.json()["models"]["resnet18"] == "ready"
            assert client.get("/v2/models/digits/ready").status_code == 503
            assert client.get("/v2/models/resnet18/ready").status_code == 200
        finally:
            assert scale(stack, gpu, "digits", 1, pool_key(gpu, "management")).status_code == 200
        wait_for(lambda: client.get("/readyz").status_code == 200, 60)
