"""A gateway wired to httpx.MockTransport pools: real policy, no network."""

from __future__ import annotations

import io

import httpx
import orjson
from PIL import Image
from starlette.requests import Request

from gateway.config import parse_config
from gateway.http import HttpFront
from gateway.pool_client import HttpxTransport

def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


def top5_answer(request: httpx.Request, backend: str) -> httpx.Response:
    return httpx.Response(
        200,
        content=orjson.dumps({"tabby": 0.5, "tiger_cat": 0.2}),
        headers={"content-type": "application/json", "X-Tiergate-Backend": backend},
    )


def config_data(**overrides) -> dict:
    data = {
        "max_body_bytes": 1024,
        "pools": {"gpu": {"url": "http://gpu.pool:8080"}, "cpu": {"url": "http://cpu.pool:8090"}},
        "tiers": {
            "premium": {"pools": ["gpu"], "deadline_ms": 2000},
            "standard": {"pools": ["cpu"]},
            "batch": {"pools": ["cpu"]},
        },
    }
    data.update(overrides)
    return data


def gateway(handler, **overrides) -> httpx.AsyncClient:
    """An httpx client talking in-process to an HttpFront whose pools answer via `handler`."""
    config = parse_config(config_data(**overrides))
    front = HttpFront(config, HttpxTransport(config.pools, httpx.MockTransport(handler)))

    async def asgi(scope, receive, send):
        response = await front.handle(Request(scope, receive))
        await response(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://gateway")


def by_pool(request: httpx.Request) -> httpx.Response:
    backend = {"gpu.pool": "tensorrt-fp16", "cpu.pool": "cpu-int8"}[request.url.host]
    return top5_answer(request, backend)
