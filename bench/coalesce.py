"""Issue 4's figures: backend calls per request and throughput with coalescing on vs
off, for traffic where 0 %, 50 % and 90 % of concurrent requests are duplicates.

Two traffic models, each mix measured with coalescing on, then (by a live config
reload) off, in one stack, so both see the same machine state:
  burst  the issue's definition: a group of k clients sends one new image k times at
         once and waits for all k answers, so (k-1)/k of the requests are duplicates of
         a request in flight (k = 1, 2, 10 for 0 %, 50 %, 90 %);
  hot    each client, independently, sends the one "hot" photo with the given
         probability, else a photo never sent before: a popular image, whose copies
         overlap only when they happen to be in flight together.
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.coalesce'
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from bench.stack import base_config, distinct_jpegs, gateway_counter, running_stack

HEADERS = {"X-SLA-Tier": "standard", "Content-Type": "image/jpeg"}


@dataclass
class Tally:
    done: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    async def post(self, client: aiohttp.ClientSession, url: str, body: bytes) -> None:
        started = time.perf_counter()
        async with client.post(url, data=body, headers=HEADERS) as response:
            await response.read()
            status = response.status
        if status == 200:
            self.done += 1
            self.latencies.append(time.perf_counter() - started)
        else:
            self.errors += 1


async def drive(url: str, traffic: str, hot: bytes, unique: list[bytes], duplicates: float,
                clients: int, seconds: float, seed: int) -> tuple[int, int, float, float]:
    rng = random.Random(seed)
    fresh = iter(unique)
    tally = Tally()
    # aiohttp: httpx's client costs ~1 ms a request and would spread "simultaneous"
    # duplicates out in time on 2 cores, hiding what coalescing does.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        stop_at = time.perf_counter() + seconds

        async def hot_photo_client() -> None:
            while time.perf_counter() < stop_at:
                await tally.post(client, url, hot if rng.random() < duplicates else next(fresh))

        async def burst_group(size: int) -> None:
            while time.perf_counter() < stop_at:
                body = next(fresh)
                await asyncio.gather(*(tally.post(client, url, body) for _ in range(size)))

        began = time.perf_counter()
        if traffic == "hot":
            await asyncio.gather(*(hot_photo_client() for _ in range(clients)))
        else:
            size = round(1 / (1 - duplicates))
            await asyncio.gather(*(burst_group(size) for _ in range(max(1, round(clients / size)))))
        elapsed = time.perf_counter() - began
    latencies = sorted(tally.latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")
    return tally.done, tally.errors, tally.done / elapsed, p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--traffic", choices=("burst", "hot"), action="append",
                        help="traffic model(s) to run (default: both)")
    args = parser.parse_args()
    unique = distinct_jpegs(6000, seed=1)
    hot = distinct_jpegs(1, seed=2)[0]
    config = base_config()
    config["pools"]["cpu"].update(max_concurrency=8, max_queue=256)
    rows = []
    with running_stack(config) as stack:
        url = stack["gateway_url"]
        for traffic in args.traffic or ("burst", "hot"):
            for duplicates in (0.0, 0.5, 0.9):
                for coalesce in (True, False):
                    stack["apply"]({**config, "coalesce": coalesce})
                    calls_before = gateway_counter(url, "tiergate_backend_calls_total", pool="cpu")
                    done, errors, rps, p99 = asyncio.run(drive(
                        url + "/predictions/resnet18", traffic, hot, unique, duplicates, args.clients,
                        args.seconds, seed=int(duplicates * 100)))
                    calls = gateway_counter(url, "tiergate_backend_calls_total", pool="cpu") - calls_before
                    rows.append((traffic, duplicates, coalesce, done, errors, calls / max(done + errors, 1), rps, p99))
                    print(f"{traffic:5} duplicates {duplicates:.0%} coalesce {'on ' if coalesce else 'off'}: "
                          f"{done} ok, {errors} errors, backend calls/request {rows[-1][5]:.3f}, "
                          f"{rps:.1f} rps, p99 {p99:.0f} ms", flush=True)
        # What the hop to a keyed coalescer costs: c=1, unique images, two gateway replicas.
        hops = {}
        for scope in ("replica", "cluster"):
            stack["apply"]({**config, "replicas": 2, "coalesce_scope": scope})
            asyncio.run(drive(url + "/predictions/resnet18", "hot", hot, unique[-400:], 0.0, 1, 3, seed=7))  # warm-up
            hops[scope] = asyncio.run(p50_at_c1(url + "/predictions/resnet18", unique[:3000], args.seconds))
            print(f"coalesce_scope {scope}: c=1 p50 {hops[scope]:.2f} ms", flush=True)
    print("\nratios (coalescing on ÷ off, same traffic mix):")
    for on, off in zip(rows[0::2], rows[1::2]):
        print(f"  {on[0]:5} duplicates {on[1]:.0%}: backend calls/request {on[5]:.3f} vs {off[5]:.3f}, "
              f"throughput ×{on[6] / off[6]:.2f}, p99 {on[7]:.0f} vs {off[7]:.0f} ms")
    print(f"  cluster-wide coalescing hop: +{hops['cluster'] - hops['replica']:.2f} ms p50 at c=1")
    return 0


async def p50_at_c1(url: str, bodies: list[bytes], seconds: float) -> float:
    latencies = []
    feed = iter(bodies)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            async with client.post(url, data=next(feed), headers=HEADERS) as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
    return sorted(latencies)[len(latencies) // 2]


if __name__ == "__main__":
    sys.exit(main())
