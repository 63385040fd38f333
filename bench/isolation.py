"""Issue 3's figures: is premium isolated from a batch flood?

Premium p99 alone vs premium p99 while `batch` is offered at 3× the CPU pool's
measured capacity (open loop: arrivals don't wait for answers), the premium error
count, and the p99 time to a 429. One stack, one run.

Here the "GPU" pool is a CPU process on the same two cores as the CPU pool, so a CPU pool
busy at capacity slows premium whatever the gateway does. A third figure separates the
two: premium p99 while the CPU pool is kept at capacity *directly* (no gateway), the
hardware's share; flood ÷ that is what the gateway's admission adds. For each premium
phase the gateway's own histograms split the mean latency into the pool call and the rest
of the gateway's pipeline (admission, queueing, routing), read from /metrics around it.
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.isolation'
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from bench.stack import base_config, distinct_jpegs, gateway_counter, running_stack


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))] * 1000 if ordered else float("nan")


async def post(client, url, body, tier) -> int:
    headers = {"X-SLA-Tier": tier, "Content-Type": "image/jpeg"}
    async with client.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status


async def closed(client, url, bodies, tier, seconds, clients=1):
    """Back-to-back requests from `clients` callers; returns (latencies, statuses)."""
    latencies, statuses, stop_at = [], [], time.perf_counter() + seconds
    feed = iter(bodies)

    async def caller():
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            statuses.append(await post(client, url, next(feed), tier))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(clients)))
    return latencies, statuses


async def open_loop(client, url, bodies, tier, rate, seconds):
    """`rate` arrivals per second regardless of answers; returns [(status, seconds)]."""
    outcomes, tasks = [], []
    feed = iter(bodies)

    async def one(body):
        started = time.perf_counter()
        try:
            outcomes.append((await post(client, url, body, tier), time.perf_counter() - started))
        except aiohttp.ClientError:
            outcomes.append((0, time.perf_counter() - started))

    began = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) < began + seconds:
        due = int((now - began) * rate) + 1
        for _ in range(due - sent):
            tasks.append(asyncio.create_task(one(next(feed))))
        sent = due
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    return outcomes


class PremiumSplit:
    """Mean time of premium calls inside the gateway, and in its calls to the gpu pool, over a
    phase (premium is the only tier on the gpu pool here)."""

    def __init__(self, gateway_url: str) -> None:
        self.url = gateway_url
        self.before = self._read()

    def _read(self) -> tuple[float, ...]:
        request = "tiergate_request_duration_seconds"
        backend = "tiergate_backend_duration_seconds"
        return tuple(
            gateway_counter(self.url, name, **labels)
            for name, labels in ((f"{request}_sum", {"tier": "premium"}), (f"{request}_count", {"tier": "premium"}),
                                 (f"{backend}_sum", {"pool": "gpu"}), (f"{backend}_count", {"pool": "gpu"}))
        )

    def report(self) -> str:
        request_s, requests, backend_s, calls = (b - a for a, b in zip(self.before, self._read()))
        if not requests or not calls:
            return "no premium calls counted"
        inside, pool = 1000 * request_s / requests, 1000 * backend_s / calls
        return f"in the gateway: mean {inside:.1f} ms, of which the gpu pool call {pool:.1f} ms, pipeline {inside - pool:.1f} ms"


def shed_time(gateway_url: str) -> tuple[float, float]:
    """(seconds, count) the gateway spent on batch calls it answered 429, so far."""
    name = "tiergate_request_duration_seconds"
    return tuple(gateway_counter(gateway_url, f"{name}_{part}", tier="batch", code="429") for part in ("sum", "count"))


async def measure(url: str, pool_url: str, seconds: float) -> None:
    gateway_url = url.removesuffix("/predictions/resnet18")
    bodies = distinct_jpegs(20000, seed=3)
    half = len(bodies) // 2
    # aiohttp: httpx's client queues requests itself at this concurrency, which would be
    # counted as gateway latency.
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        capacity_lat, capacity_status = await closed(client, url, bodies[:2000], "batch", seconds, clients=4)
        capacity = capacity_status.count(200) / seconds
        print(f"CPU pool capacity through the gateway (batch, c=4): {capacity:.1f} rps")
        split = PremiumSplit(gateway_url)
        alone, alone_status = await closed(client, url, bodies[2000:4000], "premium", seconds)
        alone_split = split.report()
        busy_task = asyncio.create_task(closed(client, pool_url, bodies[half - 2000:half], "batch", seconds, clients=4))
        await asyncio.sleep(1)
        split = PremiumSplit(gateway_url)
        contended, contended_status = await closed(client, url, bodies[4000:5000], "premium", seconds - 1)
        contended_split = split.report()
        await busy_task
        flood_task = asyncio.create_task(open_loop(client, url, bodies[half:], "batch", 3 * capacity, seconds))
        await asyncio.sleep(1)  # let the flood build up before measuring premium
        split = PremiumSplit(gateway_url)
        shed_before = shed_time(gateway_url)
        loaded, loaded_status = await closed(client, url, bodies[5000:half - 2000], "premium", seconds - 1)
        loaded_split = split.report()
        shed_s, shed_count = (after - before for before, after in zip(shed_before, shed_time(gateway_url)))
        flood = await flood_task
    shed = [s for status, s in flood if status == 429]
    print(f"premium alone:           p99 {p99(alone):7.1f} ms  ({len(alone)} requests, errors {sum(s != 200 for s in alone_status)})")
    print(f"  {alone_split}")
    print(f"premium, CPU pool busy:  p99 {p99(contended):7.1f} ms  ({len(contended)} requests, errors {sum(s != 200 for s in contended_status)}; pool loaded directly, no gateway)")
    print(f"  {contended_split}")
    print(f"premium under the flood: p99 {p99(loaded):7.1f} ms  ({len(loaded)} requests, errors {sum(s != 200 for s in loaded_status)})")
    print(f"  {loaded_split}")
    print(f"batch flood at {3 * capacity:.1f} rps: {len(flood)} sent, "
          f"{sum(s == 200 for s, _ in flood)} served, {len(shed)} got 429, "
          f"{sum(s not in (200, 429) for s, _ in flood)} other")
    if shed_count:
        print(f"  a 429's mean time in the gateway: {1000 * shed_s / shed_count:.2f} ms over {shed_count:.0f}")
    print(f"ratio premium p99 flood/alone: {p99(loaded) / p99(alone):.2f}   flood/busy pool: {p99(loaded) / p99(contended):.2f}"
          f"   p99 time to a 429: {p99(shed):.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    config = base_config(coalesce=False)
    config["pools"]["cpu"].update(max_concurrency=2, max_queue=4)
    config["tiers"] = {
        "premium": {"pools": ["gpu", "cpu"], "priority": 2, "deadline_ms": 5000, "sheddable": False},
        "standard": {"pools": ["cpu"], "priority": 1, "deadline_ms": 10000},
        "batch": {"pools": ["cpu"], "priority": 0, "deadline_ms": 30000},
    }
    with running_stack(config) as stack:
        cpu = next(pool for pool in stack["pools"] if pool["name"] == "cpu")
        asyncio.run(measure(stack["gateway_url"] + "/predictions/resnet18",
                            cpu["inference_url"] + "/predictions/resnet18", args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
