"""Admission: decide whether a request may enter the pipeline, and as what.

One order for both APIs, in one place: identify the caller (API key) → the model → the
tier → authorize the tier for the caller → the content type (the front's rule) → the body,
read within the model's size limit, the tier's deadline and the minimum upload rate. Everything here is cheap and
local (no network); a request that fails a check gets a 4xx before a pool ever sees it.
What a valid body looks like is the model's profile's business (gateway/profiles).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from starlette.requests import ClientDisconnect, Request

from .auth import KeyBook, authorize
from .config import GatewayConfig
from .errors import GatewayError, bad_request

T = TypeVar("T")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Headers Ray Serve's own ingress obeys (request timeout, disconnect handling, session and
# multiplexing routing; names compared with "-" as "_") and decodes as UTF-8, answering a
# bare 500 when that fails. Clients give Ray Serve no instructions: ingress_middlewares.
RAY_SERVE_CONTROL_HEADERS = frozenset(
    {b"x_request_timeout_seconds", b"x_request_disconnect_disabled", b"x_session_id", b"serve_multiplexed_model_id"}
)
REQUEST_ID_BYTES = re.compile(REQUEST_ID.pattern.encode())


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    """A request that passed admission: who may call it, under which tier, and its body."""

    tier: str
    body: bytes
    content: T  # what the front's content rule returned about the body's encoding
    deadline: float  # time.monotonic() by which the answer is due: arrival + the tier's deadline


class Admission:
    def __init__(self, config: GatewayConfig, keys: KeyBook) -> None:
        self.config = config
        self.keys = keys

    def identify_model(self, request: Request, model: str, version: str | None) -> None:
        """The checks every model path makes, inference or not: caller first, then the model
        (an unknown caller learns nothing about which models exist)."""
        self.keys.identify(request.headers.get("authorization"))
        check_model(self.config, model, version)

    async def admit(
        self, request: Request, model: str, version: str | None, arrived: float, content: Callable[[Request], T]
    ) -> Admitted[T]:
        """`content`: the front's rule for the request's content type and encoding (415 when
        wrong); `arrived`: time.monotonic() when the request came in, as the deadline runs from it."""
        caller = self.keys.identify(request.headers.get("authorization"))
        check_model(self.config, model, version)
        tier = resolve_tier(self.config, request, caller.default_tier if caller else None)
        authorize(caller, tier)
        encoding = content(request)
        deadline = arrived + self.config.tiers[tier].deadline_ms / 1000
        pace = UploadPace(self.config.upload_min_bytes_per_s, self.config.upload_grace_s, deadline, tier)
        body = await read_body(request, self.config.body_limit(model), pace)
        return Admitted(tier, body, encoding, deadline)


def resolve_tier(config: GatewayConfig, request: Request, caller_default: str | None = None) -> str:
    claimed = request.headers.get(config.tier_header)
    if claimed is None:
        return caller_default or config.default_tier
    tier = claimed.strip().lower()
    if tier not in config.tiers:
        raise bad_request(
            f"unknown tier in {config.tier_header}; valid tiers: {', '.join(sorted(config.tiers))}"
        )
    return tier


def request_id(request: Request) -> str:
    """The caller's X-Request-ID when it is sane, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class IngressHeaders:
    """ASGI middleware around Ray Serve's HTTP ingress (a replica's, or Serve's proxy's): the
    headers Ray Serve reads before the gateway sees the request lose their power to steer or
    crash it. Ray Serve's control headers are dropped, and so is an X-Request-ID the gateway
    would not echo (Ray then assigns a fresh one, as for a request without)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            kept = [(name, value) for name, value in scope["headers"] if _reaches_ray_serve(name, value)]
            if len(kept) != len(scope["headers"]):
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


def _reaches_ray_serve(name: bytes, value: bytes) -> bool:
    if name == b"x-request-id":
        return REQUEST_ID_BYTES.fullmatch(value) is not None
    return name.lower().replace(b"-", b"_") not in RAY_SERVE_CONTROL_HEADERS


def ingress_middlewares() -> list:
    """Ray Serve's ingress callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names it)."""
    from starlette.middleware import Middleware

    return [Middleware(IngressHeaders)]


def check_model(config: GatewayConfig, model: str, version: str | None = None) -> None:
    if model not in config.models:
        raise GatewayError(404, "ModelNotFound", f"no such model; served models: {', '.join(config.models)}")
    if version is not None and version != config.models[model].version:
        # The pools register exactly this version (torchserve_backend/launcher.py renders it), and
        # TorchServe matches versions as strings: readiness, metadata and inference agree on it.
        raise GatewayError(404, "ModelNotFound", f"no such model version; this model serves version {config.models[model].version}")


def content_type(request: Request) -> str:
    """The media type of the body, lower case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class UploadPace:
    """How fast a body must arrive: by the tier's deadline, and after a grace period at
    `min_bytes_per_s` on average (0: no minimum). A trickled body holds one of the replica's
    request slots for as long as it trickles; this bounds how long (NGINX's client_body_timeout,
    but counting bytes, so a client that sends a byte every few seconds is cut off too)."""

    min_bytes_per_s: int
    grace_s: float
    deadline: float  # time.monotonic(): arrival + the tier's deadline
    tier: str

    def due(self, started: float, received: int) -> float:
        """When the next chunk must have arrived, given `received` bytes since `started`."""
        if not self.min_bytes_per_s:
            return self.deadline
        return min(self.deadline, started + max(self.grace_s, received / self.min_bytes_per_s))

    def too_slow(self, started: float, received: int) -> GatewayError:
        if time.monotonic() >= self.deadline:
            why = f"the body did not arrive within the {self.tier} tier's deadline"
        else:
            why = f"the body arrived slower than {self.min_bytes_per_s} bytes/s ({received} bytes in {time.monotonic() - started:.1f} s)"
        # Connection: close, as the rest of the body is never read.
        return GatewayError(408, "RequestTimeout", why, {"Connection": "close"})


async def read_body(request: Request, limit: int, pace: UploadPace) -> bytes:
    """Read at most `limit` bytes, at `pace` or 408; refuse larger bodies without reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # str.isdigit alone takes "²"
            raise bad_request("Content-Length is not a number")
        if len(declared) > 18 or int(declared) > limit:  # int() refuses 4300+ digits
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    started = time.monotonic()
    loop = asyncio.get_running_loop()

    def on_loop_clock(moment: float) -> float:  # the loop's clock may differ from time.monotonic()
        return loop.time() + moment - time.monotonic()

    try:
        # One timer, moved on as chunks arrive.
        async with asyncio.timeout(on_loop_clock(pace.due(started, 0))) as timer:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                timer.reschedule(on_loop_clock(pace.due(started, size)))
    except ClientDisconnect:
        raise bad_request("the connection closed before the whole body arrived") from None
    except TimeoutError:
        raise pace.too_slow(started, size) from None
    return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "PayloadTooLarge", f"body exceeds the {limit}-byte limit")
