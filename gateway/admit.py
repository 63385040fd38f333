"""Admission: decide whether a request may enter the pipeline, and as what.

Everything here is cheap and local (no network): the model must be one the gateway
serves, the tier must exist, the body must be an image of bounded size. A request
that fails any check is answered with a 4xx before a pool ever sees it.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from .config import GatewayConfig
from .errors import GatewayError, bad_request

# curl --data-binary sends form-urlencoded by default and TorchServe accepts it,
# so a TorchServe client that only changes its host must be accepted too.
IMAGE_CONTENT_TYPES = frozenset(
    {"", "image/jpeg", "image/png", "application/octet-stream", "application/x-www-form-urlencoded"}
)
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
IMAGE_MAGIC = (JPEG_MAGIC, PNG_MAGIC)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # never "..", "/" or a query
# The pools' decoding limits (torchserve_backend/handler.py defaults), checked here on the
# image's declared size so a decompression bomb never costs a pool a decode.
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 20
# Frame-header markers (SOF0..SOF15 without DHT, JPG and DAC) and markers with no length.
JPEG_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
JPEG_SEGMENTS_SCANNED = 64  # real files reach the frame header within a handful
JPEG_FILL = re.compile(rb"\xff+")
# Headers Ray Serve's own ingress obeys (request timeout, disconnect handling, session and
# multiplexing routing; names compared with "-" as "_") and decodes as UTF-8, answering a
# bare 500 when that fails. Clients give Ray Serve no instructions: ingress_middlewares.
RAY_SERVE_CONTROL_HEADERS = frozenset(
    {b"x_request_timeout_seconds", b"x_request_disconnect_disabled", b"x_session_id", b"serve_multiplexed_model_id"}
)
REQUEST_ID_BYTES = re.compile(REQUEST_ID.pattern.encode())


@dataclass(frozen=True, slots=True)
class Call:
    """One admitted inference request, as every later stage sees it."""

    model: str
    version: str | None
    tier: str
    body: bytes
    request_id: str
    deadline: float  # time.monotonic() by which the answer is due
    content_type: str = "application/octet-stream"  # of `body`, as the pool receives it

    @property
    def path(self) -> str:
        suffix = f"/{self.version}" if self.version else ""
        return f"/predictions/{self.model}{suffix}"

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


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
    if version is not None and not VERSION.fullmatch(version):
        raise GatewayError(404, "ModelNotFound", "no such model version")


def check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in IMAGE_CONTENT_TYPES:
        raise GatewayError(
            415, "UnsupportedMediaType",
            "send the raw image bytes (image/jpeg, image/png or application/octet-stream)",
        )


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes; refuse larger bodies without reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # str.isdigit alone takes "²"
            raise bad_request("Content-Length is not a number")
        if len(declared) > 18 or int(declared) > limit:  # int() refuses 4300+ digits
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise bad_request("the connection closed before the whole body arrived") from None
    return b"".join(chunks)


def check_image(body: bytes) -> None:
    if not body:
        raise bad_request("empty body: send the image bytes")
    if not body.startswith(IMAGE_MAGIC):
        raise bad_request("body is not a JPEG or PNG image")
    size = declared_size(body)
    if size is None:
        return  # not found cheaply: the pool's decoder is the judge
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise bad_request(f"image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels")
    if min(width, height) == 0:
        raise bad_request(f"image is {width}x{height} pixels: it has none")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise bad_request(
            f"image is {width}x{height} pixels; aspect ratios beyond {MAX_ASPECT_RATIO}:1 are not accepted"
        )


def declared_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG's IHDR or a JPEG's frame header declares it, without
    decoding; None when it is not where a well-formed file has it."""
    if body.startswith(PNG_MAGIC):
        if body[12:16] != b"IHDR" or len(body) < 24:
            return None
        return int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
    at = 2  # past SOI; each segment is 0xFF fill..., a marker byte, then a 2-byte length
    for _ in range(JPEG_SEGMENTS_SCANNED):
        fill = JPEG_FILL.match(body, at)
        if fill is None or fill.end() + 8 > len(body):
            return None
        at = fill.end()
        marker = body[at]
        if marker in JPEG_FRAME_MARKERS:  # length, precision, height, width
            return int.from_bytes(body[at + 6:at + 8], "big"), int.from_bytes(body[at + 4:at + 6], "big")
        at += 1 if marker in JPEG_STANDALONE_MARKERS else 1 + int.from_bytes(body[at + 1:at + 3], "big")
    return None


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "PayloadTooLarge", f"body exceeds the {limit}-byte limit")
