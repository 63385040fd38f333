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

from starlette.requests import Request

from .config import GatewayConfig
from .errors import GatewayError, bad_request

# curl --data-binary sends form-urlencoded by default and TorchServe accepts it,
# so a TorchServe client that only changes its host must be accepted too.
IMAGE_CONTENT_TYPES = frozenset(
    {"", "image/jpeg", "image/png", "application/octet-stream", "application/x-www-form-urlencoded"}
)
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Call:
    """One admitted inference request, as every later stage sees it."""

    model: str
    version: str | None
    tier: str
    body: bytes
    request_id: str
    deadline: float  # time.monotonic() by which the answer is due

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
    return given if REQUEST_ID.match(given) else uuid.uuid4().hex


def check_model(config: GatewayConfig, model: str) -> None:
    if model not in config.models:
        raise GatewayError(404, "ModelNotFound", f"no such model; served models: {', '.join(config.models)}")


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
        if not declared.isdigit():
            raise bad_request("Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_image(body: bytes) -> None:
    if not body:
        raise bad_request("empty body: send the image bytes")
    if not body.startswith(IMAGE_MAGIC):
        raise bad_request("body is not a JPEG or PNG image")


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "PayloadTooLarge", f"body exceeds the {limit}-byte limit")
