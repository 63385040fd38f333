"""Issue 4's micro-batching question: would batching requests in the gateway beat
TorchServe's own batching (`batch_size`/`max_batch_delay`)?

Gateway-side batching would send N images to the pool in one call. Its best case is a
client doing that itself: one Open Inference Protocol request with N images (the handler
runs them as one batch). So, images/s through the gateway to the int8 CPU pool:
  A  N concurrent single-image requests, pool batch_size 1
  B  N concurrent single-image requests, pool batch_size N (TorchServe batches them)
  B2 as B with 2N concurrent requests (the next batch waits while one runs)
  C  N-image v2 requests from 2 concurrent callers (so the pool never waits for the next
     one), pool batch_size 1 (gateway-side batching, best case)
each through the gateway and straight to the pool. Two stacks (batch settings need a pool
restart), one run.
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.microbatch'
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import sys
import time

import aiohttp
import orjson

from bench.stack import base_config, distinct_jpegs, running_stack


async def images_per_second(url: str, bodies: list[bytes], n: int, seconds: float, v2: bool, callers: int) -> float:
    feed = itertools.cycle(bodies)  # coalescing is off: repeats cost the same as new images
    images = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one_caller() -> None:
            nonlocal images
            while time.perf_counter() < stop_at:
                if v2:
                    batch = [base64.b64encode(next(feed)).decode() for _ in range(n)]
                    payload = orjson.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [n], "data": batch}]})
                    request = session.post(f"{url}/v2/models/resnet18/infer", data=payload,
                                           headers={"Content-Type": "application/json", "X-SLA-Tier": "standard"})
                else:
                    request = session.post(f"{url}/predictions/resnet18", data=next(feed),
                                           headers={"Content-Type": "image/jpeg", "X-SLA-Tier": "standard"})
                async with request as response:
                    await response.read()
                    if response.status == 200:
                        images += n if v2 else 1

        began = time.perf_counter()
        await asyncio.gather(*(one_caller() for _ in range(callers)))
        return images / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("-n", type=int, default=8)
    args = parser.parse_args()
    bodies = distinct_jpegs(20000, seed=5)
    results = {}
    for batch_size in (1, args.n):
        config = base_config(coalesce=False)
        # "direct" calls the pool straight, without TorchServe's token
        config["pools"]["cpu"]["local"].update(batch_size=batch_size, max_batch_delay_ms=5, token_auth=False)
        config["pools"]["cpu"].update(max_concurrency=args.n * 4, max_queue=256)
        with running_stack(config) as stack:
            pool_url = next(pool for pool in stack["pools"] if pool["name"] == "cpu")["inference_url"]
            asyncio.run(images_per_second(stack["gateway_url"], bodies[:200], args.n, 3, v2=False, callers=args.n))  # warm-up
            for target, url in (("gateway", stack["gateway_url"]), ("direct", pool_url)):
                results[(target, "single", batch_size)] = asyncio.run(
                    images_per_second(url, bodies[200:10000], args.n, args.seconds, v2=False, callers=args.n))
                if batch_size == 1:
                    results[(target, "v2", batch_size)] = asyncio.run(
                        images_per_second(url, bodies[10000:], args.n, args.seconds, v2=True, callers=2))
                else:
                    results[(target, "single x2", batch_size)] = asyncio.run(
                        images_per_second(url, bodies[10000:], args.n, args.seconds, v2=False, callers=2 * args.n))
                print(f"pool batch_size {batch_size}, {target}: " + ", ".join(
                    f"{kind} {rate:.1f} img/s" for (where, kind, size), rate in results.items()
                    if where == target and size == batch_size), flush=True)
    for target in ("gateway", "direct"):
        a, b, b2, c = (results[(target, kind, size)] for kind, size in (
            ("single", 1), ("single", args.n), ("single x2", args.n), ("v2", 1)))
        print(f"\n{target}:")
        print(f"  A  {args.n} concurrent singles, pool batch 1:         {a:7.1f} img/s")
        print(f"  B  {args.n} concurrent singles, pool batch {args.n}:         {b:7.1f} img/s  (×{b / a:.2f} vs A)")
        print(f"  B2 {2 * args.n} concurrent singles, pool batch {args.n}:        {b2:7.1f} img/s  (×{b2 / a:.2f} vs A)")
        print(f"  C  {args.n}-image requests, 2 callers, pool batch 1: {c:7.1f} img/s  (×{c / a:.2f} vs A, ×{c / b:.2f} vs B, ×{c / b2:.2f} vs B2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
