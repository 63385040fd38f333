"""Issue 18, item 8 on the real stack: the local pools' management API wants TorchServe's key
(it can scale workers and load models), so nobody without it can take a model's workers away."""

from __future__ import annotations

import httpx

from .conftest import pool_key


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
