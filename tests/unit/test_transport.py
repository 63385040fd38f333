"""AiohttpTransport against real loopback sockets: how network failures are named."""

import asyncio
import time

import pytest

from gateway.config import PoolConfig
from gateway.pool_client import (
    AiohttpTransport,
    PoolDropped,
    PoolRequest,
    PoolTimeout,
    PoolUnreachable,
)


async def serve(behaviour):
    """A one-off loopback server; `behaviour(reader, writer)` decides what it does."""
    server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def transport(port: int, **pool) -> AiohttpTransport:
    return AiohttpTransport({"p": PoolConfig(url=f"http://127.0.0.1:{port}", **pool)})


async def read_request(reader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    return head + await reader.readexactly(length)


async def test_answer_comes_back_with_headers_and_the_token(tmp_path):
    seen = []

    async def answer(reader, writer):
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nX-Tiergate-Backend: cpu-int8\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    server, port = await serve(answer)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    pools = transport(port, auth_token_file=token)
    async with server:
        response = await pools.send("p", PoolRequest("POST", f"http://127.0.0.1:{port}/x", 2.0, b"img"))
    await pools.aclose()
    assert (response.status, response.body, response.headers["x-tiergate-backend"]) == (200, b"{}", "cpu-int8")
    assert b"authorization: bearer s3cret" in seen[0].lower() and seen[0].endswith(b"img")


async def test_refused_connection_is_unreachable():
    server, port = await serve(lambda r, w: None)
    server.close()
    await server.wait_closed()
    pools = transport(port)
    with pytest.raises(PoolUnreachable):
        await pools.send("p", PoolRequest("GET", f"http://127.0.0.1:{port}/ping", 1.0))
    await pools.aclose()


async def test_silent_pool_times_out_within_the_budget():
    async def stall(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    server, port = await serve(stall)
    pools = transport(port)
    started = time.monotonic()
    async with server:
        with pytest.raises(PoolTimeout):
            await pools.send("p", PoolRequest("POST", f"http://127.0.0.1:{port}/x", 0.2, b"img"))
    await pools.aclose()
    assert time.monotonic() - started < 1.0


async def test_connection_closed_after_the_request_is_dropped():
    async def hang_up(reader, writer):
        await read_request(reader)
        writer.close()

    server, port = await serve(hang_up)
    pools = transport(port)
    async with server:
        with pytest.raises(PoolDropped):
            await pools.send("p", PoolRequest("POST", f"http://127.0.0.1:{port}/x", 2.0, b"img"))
    await pools.aclose()
