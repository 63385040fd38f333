"""Gateway errors: every failure a client can see, as one exception with a JSON body."""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """Raised by any pipeline stage; the app turns it into a JSON response.

    `code` is a stable machine-readable name; `message` is for humans and never
    contains request payload bytes.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        pool: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.pool = pool  # the pool that caused it, when one did
        self.recorded = False  # counted in tiergate_requests_total by the pipeline already

    def body(self) -> bytes:
        return orjson.dumps({"code": self.status, "type": self.code, "message": self.message})


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, "BadRequest", message)
