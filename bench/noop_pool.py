"""A no-op stand-in for a TorchServe pool, to isolate what a gateway costs.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to answer like
TorchServe: `POST /predictions/{model}[/{version}]` returns a fixed top-5 JSON with
`X-Tiergate-Backend: noop`, `GET /ping` returns `{"status": "Healthy"}`. It answers
from prebuilt bytes on uvloop, so it is never the bottleneck of a gateway benchmark
(~20k answers/s on one core here).

    python -m bench.noop_pool --port 18081 [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

TOP5 = b'{"tabby": 0.41, "tiger_cat": 0.22, "Egyptian_cat": 0.12, "lynx": 0.05, "tiger_shark": 0.01}'
PING = b'{"status": "Healthy"}\n'
MAX_HEAD_BYTES = 64 * 1024


def response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: application/json\r\n" + extra
        + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


PREDICTION = response("200 OK", TOP5, b"x-tiergate-backend: noop\r\n")
HEALTHY = response("200 OK", PING)
NOT_FOUND = response("404 Not Found", b'{"code": 404, "type": "NotFound", "message": "no such endpoint"}')
LENGTH_REQUIRED = response("411 Length Required", b'{"code": 411, "type": "LengthRequired"}', b"connection: close\r\n")


def answer_for(request_line: bytes) -> bytes:
    method, _, rest = request_line.partition(b" ")
    path = rest.partition(b" ")[0]
    if method == b"POST" and path.startswith(b"/predictions/"):
        return PREDICTION
    if method == b"GET" and path == b"/ping":
        return HEALTHY
    return NOT_FOUND


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, header_block = head.partition(b"\r\n")
            length, close = 0, False
            for line in header_block.lower().split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    writer.write(LENGTH_REQUIRED)  # chunked bodies: no gateway here sends them
                    return
                elif name == b"connection" and value.strip() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(answer_for(request_line))
            if close:
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, delay_s: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, delay_s), host, port, limit=MAX_HEAD_BYTES, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pretend inference takes this long")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
