"""The pool client: the only code in the gateway that talks to the network.

`Transport` is deliberately tiny (send one request to a named pool, get the status,
headers and body back) so that everything above it (routing, breakers, coalescing,
shadowing) is policy that unit tests drive with a fake transport, while integration
tests drive the same policy against real TorchServe processes through `AiohttpTransport`.
Mapping a pool's answer to what the client sees also lives here, in one place.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol

import aiohttp
import orjson

from . import metrics
from .call import Inference
from .config import PoolConfig
from .errors import GatewayError

if TYPE_CHECKING:
    from .call import Call


@dataclass(frozen=True, slots=True)
class PoolRequest:
    method: str
    url: str
    timeout_s: float
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class PoolUnreachable(Exception):
    """The pool refused or dropped the connection before answering."""


class PoolDropped(Exception):
    """The connection broke after the request was sent: the pool may have done the work."""


class PoolTimeout(Exception):
    """The pool did not answer within the request's time budget."""


class Transport(Protocol):
    async def send(self, pool: str, request: PoolRequest) -> PoolResponse:
        """Send one request to `pool`; raise PoolUnreachable or PoolTimeout, never hang."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """One keep-alive connection pool per TorchServe pool, sized to its concurrency limit.

    aiohttp rather than httpx: on the gateway's hot path httpx's AsyncClient cost ~1.4 ms
    a call at c=1 and collapsed to ~300 calls/s at c=32 here, aiohttp ~0.3 ms and ~4,900/s
    (BENCHMARKS.md, "Gateway overhead").
    """

    def __init__(self, pools: Mapping[str, PoolConfig]) -> None:
        self._pools = dict(pools)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._tokens = {name: TokenFile(pool.auth_token_file) for name, pool in pools.items() if pool.auth_token_file}

    def _session(self, pool: str) -> aiohttp.ClientSession:
        # Created lazily: a session belongs to the event loop that first uses it.
        session = self._sessions.get(pool)
        if session is None:
            config = self._pools[pool]
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=config.max_concurrency * 2, ttl_dns_cache=300),
                auto_decompress=False,
                trust_env=False,  # environment proxies must never capture pool traffic
                skip_auto_headers=("User-Agent",),
            )
            self._sessions[pool] = session
        return session

    async def send(self, pool: str, request: PoolRequest) -> PoolResponse:
        budget = max(request.timeout_s, 0.001)
        timeout = aiohttp.ClientTimeout(
            total=budget, sock_connect=min(budget, self._pools[pool].connect_timeout_s)
        )
        headers = request.headers
        if (token := self._tokens.get(pool)) is not None and "Authorization" not in headers:
            try:
                headers = {**headers, "Authorization": "Bearer " + token.read()}
            except (OSError, ValueError) as exc:
                raise PoolUnreachable(f"pool {pool!r}: no token to present ({exc})") from None
        try:
            async with self._session(pool).request(
                request.method, request.url, data=request.body or None,
                headers=headers, timeout=timeout, allow_redirects=False,
            ) as response:
                body = await response.read()
                return PoolResponse(response.status, response.headers, body)
        except aiohttp.ConnectionTimeoutError:
            raise PoolUnreachable(f"connect to pool {pool!r} timed out") from None
        except asyncio.TimeoutError:
            raise PoolTimeout(f"pool {pool!r} did not answer in {budget:.3f}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise PoolUnreachable(f"pool {pool!r} unreachable: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PoolDropped(f"pool {pool!r} dropped the connection: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()


class TokenFile:
    """A pool's token, read again whenever its file changes: a restarted local pool has a new
    key, and a mounted Kubernetes Secret is updated in place when it is rotated."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token = ""

    def read(self) -> str:
        stat = self.path.stat()
        if (stat.st_mtime_ns, stat.st_ino) != self._seen:
            token = self.path.read_text().strip()
            if not token:
                raise ValueError(f"TorchServe token file {self.path} is empty")
            self._token, self._seen = token, (stat.st_mtime_ns, stat.st_ino)
        return self._token


class PoolClient:
    """Sends an admitted call to a named pool within the call's deadline."""

    def __init__(self, pools: Mapping[str, PoolConfig], transport: Transport) -> None:
        self._urls = {name: pool.url for name, pool in pools.items()}
        self._management = {name: pool.management_url for name, pool in pools.items() if pool.management_url}
        self._management_keys = {
            name: TokenFile(pool.management_token_file) for name, pool in pools.items() if pool.management_token_file
        }
        self.transport = transport

    async def infer(self, pool: str, call: "Call", budget_s: float | None = None) -> Inference:
        """`budget_s`: how long this attempt may take (at most the call's time left, the default)."""
        time_left = call.time_left() if budget_s is None else min(budget_s, call.time_left())
        if time_left <= 0:
            raise PoolTimeout(f"deadline passed before pool {pool!r} was called")
        request = PoolRequest(
            "POST",
            self._urls[pool] + call.path,
            timeout_s=time_left,
            body=call.body,
            headers={"content-type": call.content_type, "x-request-id": call.request_id},
        )
        metrics.BACKEND_CALLS.labels(pool).inc()
        started = time.perf_counter()
        try:
            response = await self.transport.send(pool, request)
        finally:
            metrics.BACKEND_LATENCY.labels(pool).observe(time.perf_counter() - started)
        inference = read_inference(pool, response)
        if (batch_size := _batch_size(response)) is not None:
            metrics.POOL_BATCH_SIZE.labels(pool).observe(batch_size)
        return inference

    async def scrape(self, pool: str, url: str, timeout_s: float) -> str | None:
        """The pool's Prometheus exposition text, or None when it does not answer in time."""
        try:
            response = await self.transport.send(pool, PoolRequest("GET", url, timeout_s=timeout_s))
        except (PoolUnreachable, PoolDropped, PoolTimeout):
            return None
        return response.body.decode("utf-8", "replace") if response.status == 200 else None

    async def ping(self, pool: str) -> str | None:
        """None when the pool answers TorchServe's ping "Healthy", else why not.

        TorchServe says "Partial Healthy" (still HTTP 200) or "Unhealthy" (500) when it counts
        fewer running workers than the models' minimums. It counts worker threads, not worker
        processes: a killed worker being restarted still counts, so a model short of workers
        is seen only by `worker_check`. (A probe inference per model would see it too, but every
        probe would count as a request in the pool's metrics.)
        """
        request = PoolRequest("GET", self._urls[pool] + "/ping", timeout_s=1.0)
        try:
            response = await self.transport.send(pool, request)
        except (PoolUnreachable, PoolDropped, PoolTimeout) as exc:
            return str(exc)
        try:
            status = orjson.loads(response.body).get("status")
        except (orjson.JSONDecodeError, AttributeError):
            status = None
        if response.status == 200 and status == "Healthy":
            return None
        if status in ("Partial Healthy", "Unhealthy"):
            return f"ping says {status}: a model has fewer running workers than its minimum"
        return f"ping answered HTTP {response.status}"


    async def worker_check(self, pool: str, model: str) -> str | None:
        """None when the pool's management API describes a READY worker for `model` (or the
        pool has no management_url to ask), else why not."""
        if pool not in self._management:
            return None
        headers = {}
        if (key := self._management_keys.get(pool)) is not None:
            try:
                headers["Authorization"] = "Bearer " + key.read()
            except (OSError, ValueError) as exc:
                return f"no management key to present ({exc})"
        request = PoolRequest("GET", f"{self._management[pool]}/models/{model}", timeout_s=1.0, headers=headers)
        try:
            response = await self.transport.send(pool, request)
            versions = orjson.loads(response.body) if response.status == 200 else None
        except (PoolUnreachable, PoolDropped, PoolTimeout) as exc:
            return f"management API: {exc}"
        except orjson.JSONDecodeError:
            versions = None
        if not isinstance(versions, list):
            return f"management API answered HTTP {response.status} for model {model!r}"
        workers = [worker for version in versions if isinstance(version, dict) for worker in version.get("workers", [])]
        if not any(isinstance(worker, dict) and worker.get("status") == "READY" for worker in workers):
            return f"no READY worker for model {model!r}"
        return None


# A pool's own 4xx is the client's fault (bad image, unknown version) and passes
# through; anything else the pool says is the gateway's problem to name.
def read_inference(pool: str, response: PoolResponse) -> Inference:
    status = response.status
    if status == 200:
        return Inference(
            body=response.body,
            content_type=response.headers.get("content-type", "application/json"),
            backend=response.headers.get("x-tiergate-backend", "unknown"),
        )
    if status == 503 and b"Prediction failed" in response.body:
        # TorchServe's answer when the model's handler raised on this input (a stock handler on
        # bytes it cannot read): the input's doing as far as the gateway can tell, not capacity.
        raise GatewayError(
            422, "ModelFailed", f"the model's handler failed on this input (pool {pool!r})", pool=pool
        )
    if status == 503:
        raise GatewayError(
            503, "PoolOverloaded", f"pool {pool!r} is at capacity; retry later",
            {"Retry-After": "1"}, pool=pool,
        )
    if status == 404 and b"ModelVersionNotFoundException" in response.body:
        # The client named a version the pool does not have: its fault, and no sign of a
        # broken pool (counted as one, a few such calls would open the pool's breaker).
        raise GatewayError(404, "ModelNotFound", "no such model version", pool=pool)
    if status == 404:
        raise GatewayError(502, "PoolMisconfigured", f"pool {pool!r} does not serve this model", pool=pool)
    if status in (401, 403) or (status == 400 and b"InvalidKeyException" in response.body):
        # The gateway's pool token was refused (TorchServe says so with a 400): an
        # operator's problem, never the client's.
        raise GatewayError(502, "PoolAuthFailed", f"pool {pool!r} refused the gateway's token", pool=pool)
    if 400 <= status < 500:
        raise GatewayError(status, "InvalidInput", _pool_message(response.body, status), pool=pool)
    raise GatewayError(502, "PoolError", f"pool {pool!r} failed the request (HTTP {status})", pool=pool)


def _batch_size(response: PoolResponse) -> int | None:
    """How many images the handler call that answered carried; None from a pool without the header."""
    value = response.headers.get("x-tiergate-batch-size", "")
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


def _pool_message(body: bytes, status: int) -> str:
    """The pool's own error message, bounded, so clients learn what was wrong."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"rejected by the model (HTTP {status})"
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return parsed["message"][:500]
    return f"rejected by the model (HTTP {status})"

