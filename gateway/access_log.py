"""Structured access logs: one JSON line per request, never the payload.

Everything logged is already a response header or a bounded value, so a hostile
client cannot inject a second log line or a secret into the log.
"""

from __future__ import annotations

import logging
import sys

import orjson
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("tiergate.access")


def configure() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # one line per request, not one per configured handler


def record(request: Request, response: Response, request_id: str, seconds: float) -> None:
    headers = response.headers
    entry = {
        "request_id": request_id,
        "method": request.method,
        "path": request.scope["path"][:256],
        "status": response.status_code,
        "tier": headers.get("x-tiergate-tier"),
        "pool": headers.get("x-tiergate-pool"),
        "backend": headers.get("x-tiergate-backend"),
        "coalesced": headers.get("x-tiergate-coalesced") == "1",
        "cache": headers.get("x-tiergate-cache"),
        "latency_ms": round(seconds * 1000, 3),
    }
    log.info(orjson.dumps(entry).decode())
