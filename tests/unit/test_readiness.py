"""/readyz and the v2 readiness endpoints read TorchServe's ping: only "Healthy" means every
model of the pool has its workers ("Partial Healthy" still answers HTTP 200)."""

import asyncio

import httpx
import pytest

from gateway import pipeline

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


def described(gpu_workers: list[dict]):
    """Pools whose ping says Healthy; the gpu pool's management API describes `gpu_workers`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "gpu.management":
            assert request.headers["authorization"] == "Bearer management-key"
            return httpx.Response(200, json=[{"modelName": "resnet18", "modelVersion": "1.0", "workers": gpu_workers}])
        return by_pool(request)

    return handler


@pytest.mark.parametrize("workers, ready", [
    ([{"id": "9000", "status": "READY"}], True),
    ([], False),  # scaled to zero: the ping still says Healthy
    ([{"id": "9000", "status": "UNLOADING"}], False),  # a killed worker being restarted
])
async def test_a_pool_with_a_management_url_is_asked_for_a_ready_worker_per_model(tmp_path, workers, ready):
    key = tmp_path / "management.token"
    key.write_text("management-key\n")
    pools = {
        "gpu": {"url": "http://gpu.pool:8080", "management_url": "http://gpu.management:8081", "management_token_file": str(key)},
        "cpu": {"url": "http://cpu.pool:8090"},
    }
    async with gateway(described(workers), pools=pools) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == (200 if ready else 503)
    expected = "ready" if ready else "not ready: pool 'gpu': no READY worker for model 'resnet18'"
    assert answer.json()["models"]["resnet18"] == expected


async def test_a_flood_of_health_checks_asks_each_pool_once_a_second(monkeypatch):
    """/ping, /readyz and v2's ready endpoints take no key: answering each from the pools
    would hand every caller a ping per pool."""
    pings: list[str] = []

    async def slow_pools(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ping":
            pings.append(request.url.host)
            await asyncio.sleep(0.05)  # callers arriving meanwhile share the check in flight
        return by_pool(request)

    monkeypatch.setattr(pipeline, "READINESS_TTL_S", 0.5)
    async with gateway(slow_pools) as client:
        paths = ["/readyz", "/ping", "/v2/health/ready", "/v2/models/resnet18/ready"] * 5
        answers = await asyncio.gather(*(client.get(path) for path in paths))
        assert all(answer.status_code == 200 for answer in answers)
        assert sorted(pings) == ["cpu.pool", "gpu.pool"]
        await client.get("/readyz")  # well within the half second
        assert len(pings) == 2
        await asyncio.sleep(0.5)
        await client.get("/readyz")
    assert sorted(pings) == ["cpu.pool", "cpu.pool", "gpu.pool", "gpu.pool"]
