"""/readyz and the v2 readiness endpoints read TorchServe's ping: only "Healthy" means every
model of the pool has its workers ("Partial Healthy" still answers HTTP 200)."""

import httpx
import pytest

from .fakes import by_pool, gateway


def pinging(gpu_status: int, gpu_says: str):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ping":
            if request.url.host == "gpu.pool":
                return httpx.Response(gpu_status, json={"status": gpu_says})
            return httpx.Response(200, json={"status": "Healthy"})
        return by_pool(request)

    return handler


@pytest.mark.parametrize("status, says", [(200, "Partial Healthy"), (500, "Unhealthy")])
async def test_a_pool_short_of_workers_makes_its_models_not_ready(status, says):
    async with gateway(pinging(status, says)) as client:
        ready = await client.get("/readyz")
        v2_model = await client.get("/v2/models/resnet18/ready")
        v2_server = await client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert ready.json()["pools"] == {"gpu": f"ping says {says}: a model has fewer running workers than its minimum"}
    assert ready.json()["models"]["resnet18"].startswith("not ready: pool 'gpu': ping says")
    assert (v2_model.status_code, v2_server.status_code) == (503, 503)


async def test_healthy_pools_are_ready():
    async with gateway(pinging(200, "Healthy")) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"resnet18": "ready"}
    assert len(ready.json()["config"]) == 16  # the digest of the config this replica runs
