"""The gateway's own per-request cost, in-process: `HttpFront.handle` on a TorchServe-API
request to a pool behind a no-op Transport (no Ray, no sockets, no pool), for this checkout
and others side by side, alternating, so drift on a shared machine hits them alike.

    .venv/bin/python -m bench.front_cost [--checkout NAME=PATH ...] [--rounds 4] [--requests 4000]

Each round runs every checkout once in a fresh interpreter (PYTHONPATH=checkout): 500 warm-up
requests, then the best of 5 × --requests. Prints µs/request per round, the median of each
checkout's rounds, and each one's ratio to the first. A checkout from before per-model config
gets `models: [resnet18]`; later ones the same model as a map.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(requests: int) -> float:
    """Best µs/request over 5 batches, in this interpreter's checkout."""
    import logging

    from PIL import Image
    from starlette.requests import Request

    from gateway.config import parse_config
    from gateway.http import HttpFront
    from gateway.pool_client import PoolResponse

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    answer = PoolResponse(200, {"content-type": "application/json", "x-tiergate-backend": "noop"}, b'{"tabby": 1.0}')

    class Noop:
        async def send(self, pool, request):
            return answer

        async def aclose(self):
            pass

    base = {
        "pools": {"noop": {"url": "http://127.0.0.1:1", "max_concurrency": 1024}},
        "tiers": {"noop": {"pools": ["noop"]}}, "default_tier": "noop", "coalesce": False, "access_log": False,
    }
    try:
        config = parse_config({**base, "models": {"resnet18": {"profile": "image-classifier"}}})
    except Exception:  # a checkout from before per-model config
        config = parse_config({**base, "models": ["resnet18"]})
    logging.disable(logging.WARNING)  # "no API keys configured"
    front = HttpFront(config, Noop())
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predictions/resnet18", "raw_path": b"/predictions/resnet18", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"image/jpeg"), (b"content-length", str(len(jpeg)).encode()), (b"x-request-id", b"r1")],
        "client": ("127.0.0.1", 1), "server": ("gateway", 80),
    }

    async def receive():
        return {"type": "http.request", "body": jpeg, "more_body": False}

    async def run() -> float:
        for _ in range(500):
            await front.handle(Request(scope, receive))
        batches = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(requests):
                response = await front.handle(Request(scope, receive))
            batches.append((time.perf_counter() - started) / requests * 1e6)
        assert response.status_code == 200, response.body
        return min(batches)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.front_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=PATH",
                        help="another checkout to compare (this one is always first, as 'this')")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args(argv)
    if args.measure:
        import gateway

        print(json.dumps({"us": measure(args.requests), "gateway": str(Path(gateway.__file__).parent)}))
        return 0
    checkouts = {"this": ROOT, **{name: Path(path).resolve() for name, path in (c.split("=", 1) for c in args.checkout)}}
    rounds: dict[str, list[float]] = {name: [] for name in checkouts}
    for round_number in range(1, args.rounds + 1):
        for name, path in checkouts.items():
            # Run as a script from the checkout: `gateway` then comes from PYTHONPATH, ahead of
            # this venv's editable install of ROOT.
            child = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--measure", "--requests", str(args.requests)],
                cwd=path, env={**os.environ, "PYTHONPATH": str(path)}, capture_output=True, text=True, check=True,
            )
            result = json.loads(child.stdout.splitlines()[-1])
            rounds[name].append(result["us"])
            print(f"round {round_number} {name:>12}: {result['us']:7.1f} µs/request  ({result['gateway']})", flush=True)
    first = statistics.median(rounds["this"])
    for name, values in rounds.items():
        median = statistics.median(values)
        print(f"{name:>12}: median {median:7.1f} µs/request  ×{median / first:.2f} of this  (rounds {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
