"""What both API fronts put on a response: the served-by headers and the request id."""

from __future__ import annotations

from .call import Reply
from .errors import GatewayError


def served_headers(reply: Reply, tier: str) -> dict[str, str]:
    """What served this answer, as every API surface reports it."""
    headers = {
        "X-Tiergate-Tier": tier,
        "X-Tiergate-Pool": reply.pool,
        "X-Tiergate-Backend": reply.inference.backend,
    }
    if reply.coalesced:
        headers["X-Tiergate-Coalesced"] = "1"
    if reply.cache:
        headers["X-Tiergate-Cache"] = reply.cache
    return headers


def error_headers(exc: GatewayError) -> dict[str, str]:
    headers = dict(exc.headers)
    if exc.pool:
        headers["X-Tiergate-Pool"] = exc.pool
    return headers
