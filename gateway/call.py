"""The core request types every stage shares: an admitted call, a pool's answer, and the
reply the pipeline hands back. No web framework here: the fronts turn HTTP into a `Call`
and a `Reply` back into HTTP; everything between sees only these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Call:
    """One admitted inference request, in the form its pool receives."""

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


@dataclass(frozen=True, slots=True)
class Inference:
    """A successful answer from a pool, with what actually ran it."""

    body: bytes
    content_type: str
    backend: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A call's answer and how it was obtained."""

    inference: Inference
    pool: str
    coalesced: bool = False  # answered by another request's backend call
    cache: str | None = None  # "hit" or "miss" where the model has a response cache
