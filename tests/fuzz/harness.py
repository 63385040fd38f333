"""The gateway's HTTP surface in-process, with pools that decode requests like the real handlers.

Requests are driven as raw ASGI scopes, so a test can send what no well-behaved client
library would: control characters and non-ASCII bytes in headers, duplicated headers,
absurd Content-Length values, unknown methods, undecoded paths, bodies that stop early.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import httpx
import orjson
import yaml
from starlette.requests import Request

from gateway.cli import default_config
from gateway.config import parse_config
from gateway.http import HttpFront
from tests.unit.fakes import HandlerTransport, config_data
from torchserve_backend.handler import (
    DEFAULT_MAX_IMAGE_PIXELS,
    InvalidInput,
    decode_image,
)

from .inputs import MARKER

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The bundled config's models (one of each profile) and which pools serve them.
BUNDLED = yaml.safe_load(default_config().read_text())
EVERY_MODEL = {
    "models": BUNDLED["models"],
    "pools": {
        "gpu": {"url": "http://gpu.pool:8080", "models": BUNDLED["pools"]["gpu"]["models"]},
        "cpu": {"url": "http://cpu.pool:8090", "models": BUNDLED["pools"]["cpu"]["models"]},
    },
    "tiers": BUNDLED["tiers"],
}


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode("latin-1").lower() == name:
                return value.decode("latin-1")
        return None

    def json(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class DecodingPool:
    """Pools answering like TorchServe with each bundled model's handler: 400 for what it cannot decode."""

    bodies_seen: list[bytes] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ping":
            return httpx.Response(200, json={"status": "Healthy"})
        model, _, version = request.url.path.removeprefix("/predictions/").partition("/")
        if version not in ("", "1.0"):  # what TorchServe says of a version it does not have
            return httpx.Response(404, json={
                "code": 404, "type": "ModelVersionNotFoundException",
                "message": f"Model version: {version} does not exist for model: {model}",
            })
        self.bodies_seen.append(request.content)
        backend = {"headers": {"X-Tiergate-Backend": "cpu-int8" if request.url.host == "cpu.pool" else "tensorrt-fp16"}}
        if model == "digits":
            rows = orjson.loads(request.content)["inputs"][0]["shape"][0]
            outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [rows, 10], "data": [0.1] * 10 * rows}]
            return httpx.Response(200, json={"model_name": model, "model_version": "1.0", "outputs": outputs}, **backend)
        if model == "sentiment":
            return httpx.Response(200, json={"label": "positive", "probabilities": {"negative": 0.2, "positive": 0.8}}, **backend)
        try:
            decode_image(request.content, DEFAULT_MAX_IMAGE_PIXELS)
        except InvalidInput as error:
            return httpx.Response(400, json={"code": 400, "type": "InvalidInput", "message": str(error)})
        return httpx.Response(200, json={"tabby": 0.6, "tiger_cat": 0.3}, **backend)


class Gateway:
    """One HttpFront on one event loop for a whole test module (hypothesis runs examples
    synchronously; the loop is driven per request)."""

    def __init__(self, **overrides) -> None:
        self.pool = DecodingPool()
        config = parse_config(config_data(**{"max_body_bytes": 256 * 1024, **overrides}))
        self.front = HttpFront(config, HandlerTransport(self.pool))
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    async def asgi(self, scope, receive, send) -> None:
        response = await self.front.handle(Request(scope, receive))
        await response(scope, receive, send)

    def call(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] = (),
        body_chunks: list[bytes] = (),
        disconnect: bool = False,
    ) -> Answer:
        """One request; `disconnect` ends the body with the client going away instead."""
        return self.loop.run_until_complete(self._call(method, path, headers, body_chunks, disconnect))

    async def _call(self, method, path, headers, body_chunks, disconnect) -> Answer:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogatepass"),
            "query_string": b"", "root_path": "", "headers": list(headers),
            "client": ("127.0.0.1", 50000), "server": ("gateway", 80),
        }
        messages = [
            {"type": "http.request", "body": chunk, "more_body": True} for chunk in body_chunks
        ] + [{"type": "http.disconnect"} if disconnect else {"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)  # a real server only answers disconnect once the response is out

        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await self.asgi(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Answer(start["status"], list(start.get("headers", [])), body)


def assert_client_fault_answer(answer: Answer, path: str = "") -> None:
    """What every answer to hostile input must look like: a 4xx (or a 200), never a 5xx,
    errors as JSON in the shape of the API asked, nothing planted echoed, a sane request id."""
    assert answer.status < 500, (answer.status, answer.body[:300])
    assert MARKER.encode() not in answer.body
    request_id = answer.header("x-request-id")
    assert request_id is None or REQUEST_ID.fullmatch(request_id), request_id
    if answer.status >= 400:
        assert request_id is not None
        assert answer.header("content-type") == "application/json", answer.headers
        error = answer.json()
        if (path == "/v2" or path.startswith("/v2/")) and "error" in error:  # Open Inference Protocol
            assert isinstance(error["error"], str) and error["error"]
        else:
            assert error["code"] == answer.status and error["type"] and error["message"]
