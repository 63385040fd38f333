"""/readyz and the v2 readiness endpoints: a pool that pings healthy but has no worker for a model."""

import asyncio

import httpx
import pytest

from .fakes import by_pool, gateway

NO_WORKER = {
    "code": 503, "type": "ServiceUnavailableException",
    "message": 'Model "resnet18" has no worker to serve inference request. Please use scale workers API to add workers.',
}


def gpu_without_workers(request: httpx.Request) -> httpx.Response:
    """TorchServe with the model scaled to zero workers: /ping still says Healthy."""
    if request.url.path == "/ping":
        return httpx.Response(200, json={"status": "Healthy"})
    if request.url.host == "gpu.pool":
        return httpx.Response(503, json=NO_WORKER)
    return httpx.Response(400, json={"code": 400, "type": "InvalidInput", "message": "not an image"})


async def test_readyz_names_the_model_a_pool_has_no_worker_for():
    async with gateway(gpu_without_workers) as client:
        ready = await client.get("/readyz")
        v2_model = await client.get("/v2/models/resnet18/ready")
        v2_server = await client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert ready.json()["models"]["resnet18"] == "not ready: pool 'gpu': no worker for model 'resnet18'"
    assert (v2_model.status_code, v2_server.status_code) == (503, 503)


def healthy_ping(probe_answer):
    """A pool whose /ping is healthy and whose predictions answer via `probe_answer`."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ping":
            return httpx.Response(200, json={"status": "Healthy"})
        return await probe_answer(request)

    return handler


async def rejected(request: httpx.Request) -> httpx.Response:  # the handler ran: a worker is there
    return httpx.Response(400, json={"code": 400, "type": "InvalidInput", "message": "not an image"})


async def queued(request: httpx.Request) -> httpx.Response:  # busy enough to keep the probe waiting
    await asyncio.sleep(5)
    return by_pool(request)


@pytest.mark.parametrize("probe_answer", [rejected, queued])
async def test_a_model_with_a_worker_is_ready(probe_answer):
    async with gateway(healthy_ping(probe_answer)) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"resnet18": "ready"}
