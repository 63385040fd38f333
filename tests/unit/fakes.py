"""A gateway whose pools are faked at the Transport cut-off: real policy, no network.

Pools are written as httpx.MockTransport-style handlers (a function of an httpx.Request
returning an httpx.Response, or raising httpx's errors), sync or async.
"""

from __future__ import annotations

import asyncio
import inspect
import io

import httpx
import orjson
from PIL import Image
from starlette.requests import Request

from gateway.config import parse_config
from gateway.http import HttpFront
from gateway.pool_client import PoolDropped, PoolRequest, PoolResponse, PoolTimeout, PoolUnreachable

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


class HandlerTransport:
    def __init__(self, handler) -> None:
        self.handler = handler

    async def send(self, pool: str, request: PoolRequest) -> PoolResponse:
        fake = httpx.Request(
            request.method, request.url, content=request.body, headers=dict(request.headers),
            extensions={"timeout": {"read": request.timeout_s}},
        )
        try:
            answer = self.handler(fake)
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, request.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise PoolTimeout(f"pool {pool!r} timed out") from None
        except httpx.ConnectError:
            raise PoolUnreachable(f"pool {pool!r} refused") from None
        except httpx.TransportError:
            raise PoolDropped(f"pool {pool!r} dropped") from None
        return PoolResponse(answer.status_code, answer.headers, answer.content)

    async def aclose(self) -> None:
        pass


def config_data(**overrides) -> dict:
    data = {
        "max_body_bytes": 1024,
        "models": {"resnet18": {"profile": "image-classifier"}},
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
    front = HttpFront(config, HandlerTransport(handler))

    async def asgi(scope, receive, send):
        response = await front.handle(Request(scope, receive))
        await response(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://gateway")


def by_pool(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/ping":  # as TorchServe answers it with every model's workers running
        return httpx.Response(200, json={"status": "Healthy"})
    backend = {"gpu.pool": "tensorrt-fp16", "cpu.pool": "cpu-int8"}[request.url.host]
    return top5_answer(request, backend)
