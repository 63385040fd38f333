"""The floor for a Python gateway: FastAPI routing on the tier header, aiohttp to the pool.

No admission checks, limits, breakers, coalescing, shadows or metrics: whatever tiergate
costs beyond this is the price of its policy (and of Ray Serve). Runs on uvicorn with
uvloop and httptools, one process unless --workers says otherwise.

    python -m bench.fastapi_proxy --port 18200 --route noop=http://127.0.0.1:18081 \\
        --route standard=http://127.0.0.1:18090 --default-tier standard
"""

from __future__ import annotations

import argparse
import contextlib
import os

import aiohttp
import uvicorn
from fastapi import FastAPI, Request, Response

ROUTES_ENV = "FASTAPI_PROXY_ROUTES"  # "tier=url,tier=url": workers are separate processes
DEFAULT_TIER_ENV = "FASTAPI_PROXY_DEFAULT_TIER"


def create_app() -> FastAPI:
    routes = dict(entry.split("=", 1) for entry in os.environ[ROUTES_ENV].split(","))
    default_tier = os.environ[DEFAULT_TIER_ENV]
    sessions: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        for session in sessions.values():
            await session.close()

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    def session_for(tier: str) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if tier not in sessions:
            sessions[tier] = aiohttp.ClientSession(
                base_url=routes[tier],
                connector=aiohttp.TCPConnector(limit=512),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent",),
            )
        return sessions[tier]

    @app.post("/predictions/{model}")
    async def predict(model: str, request: Request) -> Response:
        tier = request.headers.get("x-sla-tier", default_tier)
        if tier not in routes:
            return Response(b'{"code": 400, "type": "BadRequest", "message": "unknown tier"}', 400)
        body = await request.body()
        async with session_for(tier).post(
            f"/predictions/{model}", data=body, headers={"content-type": "application/octet-stream"}
        ) as upstream:
            answer = await upstream.read()
            backend = upstream.headers.get("x-tiergate-backend", "unknown")
            return Response(
                answer, upstream.status, media_type=upstream.headers.get("content-type"),
                headers={"x-tiergate-tier": tier, "x-tiergate-backend": backend},
            )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status": "alive"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", action="append", required=True, help="tier=base URL of its pool")
    parser.add_argument("--default-tier", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ[ROUTES_ENV] = ",".join(args.route)
    os.environ[DEFAULT_TIER_ENV] = args.default_tier
    uvicorn.run(
        "bench.fastapi_proxy:create_app", factory=True, host=args.host, port=args.port,
        workers=args.workers, loop="uvloop", http="httptools", access_log=False, log_level="warning",
    )


if __name__ == "__main__":
    main()
