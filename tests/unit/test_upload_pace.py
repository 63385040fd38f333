"""A body must arrive by its tier's deadline and, after a grace period, at a minimum rate:
a trickled upload gets 408 and frees its slot instead of holding it as long as it trickles."""

import asyncio
import time

import pytest
from starlette.requests import Request

from gateway.admit import UploadPace, read_body
from gateway.errors import GatewayError


def trickled(chunks: list[bytes], every_s: float, first_after_s: float | None = None) -> Request:
    """A request whose body arrives one chunk every `every_s` seconds, as a slow client sends it."""
    pending = list(chunks)
    waits = [every_s if first_after_s is None else first_after_s] + [every_s] * len(chunks)

    async def receive():
        if pending:
            await asyncio.sleep(waits.pop(0))
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.Event().wait()  # the client never finishes

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def pace(min_bytes_per_s=1000, grace_s=0.2, deadline_in_s=30.0) -> UploadPace:
    return UploadPace(min_bytes_per_s, grace_s, time.monotonic() + deadline_in_s, "premium")


async def test_a_body_at_pace_is_read_whole():
    body = await read_body(trickled([b"a" * 500] * 4, 0.05), 10_000, pace())
    assert body == b"a" * 2000


async def test_a_trickle_below_the_minimum_rate_is_408_after_the_grace_period():
    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        await read_body(trickled([b"x"] * 100, 0.05), 10_000, pace(grace_s=0.3))
    assert refused.value.status == 408 and refused.value.code == "RequestTimeout"
    assert "bytes/s" in refused.value.message
    assert refused.value.headers["Connection"] == "close"
    assert 0.3 <= time.monotonic() - started < 1.5


async def test_a_burst_buys_time_at_the_minimum_rate_then_the_stall_is_cut():
    # 600 bytes at once earn 0.6 s at 1000 bytes/s; then nothing more arrives.
    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        await read_body(trickled([b"y" * 600, b"z"], 5.0, first_after_s=0), 10_000, pace(grace_s=0.1))
    assert refused.value.status == 408
    assert 0.6 <= time.monotonic() - started < 5.0


async def test_the_tier_deadline_bounds_an_upload_even_without_a_minimum_rate():
    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        await read_body(trickled([b"x"] * 100, 0.05), 10_000, pace(min_bytes_per_s=0, deadline_in_s=0.5))
    assert refused.value.status == 408
    assert "premium tier's deadline" in refused.value.message
    assert 0.5 <= time.monotonic() - started < 1.5
