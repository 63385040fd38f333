"""Issue 3's figures: is premium isolated from a batch flood?

Premium p99 alone vs premium p99 while `batch` is offered at 3× the CPU pool's
measured capacity (open loop: arrivals don't wait for answers), the premium error
count, and the p99 time to a 429; three stacks, one run. Premium and a batch probe (whose 429s
are timed) are sent by blocking clients in processes of their own, so their times carry none
of the flood generator's event-loop lag.

Pools are placed three ways. First both are stand-ins for pools on other machines, as in
production (a GPU node, CPU nodes): each reads the image and answers after a fixed wait,
computing nothing on these cores, so what is measured is the gateway (with HAProxy, Ray and
the clients) isolating premium from a flood it sheds. Then only the premium pool is a
stand-in, the flooded CPU pool real and on these cores.

Last the "GPU" pool is the real one too, a CPU process on the same two cores as the CPU pool,
so a CPU pool busy at capacity slows premium whatever the gateway does. A third figure
separates the two: premium p99 while the CPU pool is kept at capacity *directly* (no
gateway), the hardware's share; flood ÷ that is what the gateway's admission adds. For each
premium phase the gateway's own histograms split the mean latency into the pool call and the
rest of the gateway's pipeline (admission, queueing, routing), read from /metrics around it.
Those phases are then measured again with the premium pool given a core of its own (CPU 1)
and everything else on CPU 0, the CPU pool at nice 19 there, while the gateway, HAProxy, Ray
and the load generator still share a core with the flooded pool.
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.isolation'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psutil

from bench.soak import stack_processes
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
    """Back-to-back requests from `clients` callers, to load a pool; returns their statuses."""
    statuses, stop_at = [], time.perf_counter() + seconds
    feed = itertools.cycle(bodies)  # a fast pool may need more bodies than the slice holds

    async def caller():
        while time.perf_counter() < stop_at:
            statuses.append(await post(client, url, next(feed), tier))

    await asyncio.gather(*(caller() for _ in range(clients)))
    return statuses


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


def probe(url: str, bodies: list[bytes], tier: str, pause: float, seconds: float) -> list[tuple[int, float]]:
    """`tier` requests from a blocking client in a process of its own, `pause` s apart (0: back to
    back) over `seconds`: [(status, seconds)], status 0 for a connection error. The flood's event
    loop lags behind its own arrivals by tens of milliseconds; timed here, a request carries none
    of that, as a caller on another machine would see it (still sharing these two cores). The
    pause also keeps a batch probe from taking the slot its own answer just freed."""
    parts = urlsplit(url)
    headers = {"X-SLA-Tier": tier, "Content-Type": "image/jpeg"}
    connection, outcomes, feed = None, [], itertools.cycle(bodies)
    stop_at = time.perf_counter() + seconds
    while (started := time.perf_counter()) < stop_at:
        connection = connection or http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            connection.request("POST", parts.path, body=next(feed), headers=headers)
            response = connection.getresponse()
            response.read()
            outcomes.append((response.status, time.perf_counter() - started))
        except (OSError, http.client.HTTPException):
            outcomes.append((0, time.perf_counter() - started))
            connection.close()
            connection = None  # reconnect
        time.sleep(pause)
    return outcomes


def stand_in_pool(port: int, wait_s: float) -> None:
    """A pool on another machine, as these two cores see it: it reads the image and answers
    `wait_s` later, computing nothing here. Runs until terminated."""
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(wait_s)
        return web.json_response({"stand-in": 1.0}, headers={"X-Tiergate-Backend": "stand-in"})

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({"status": "Healthy"})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/predictions/resnet18", predict)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


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


def threads_of(pid: int) -> list[int]:
    """Every thread of `pid` and its descendants: Linux keeps niceness and CPU affinity per thread."""
    root = psutil.Process(pid)
    tids = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(FileNotFoundError):  # a short-lived child, gone meanwhile
            tids += [int(task.name) for task in Path(f"/proc/{process.pid}/task").iterdir()]
    return tids


def give_premium_pool_a_core(stack: dict) -> None:
    """The premium pool alone on CPU 1; the gateway, Ray, HAProxy, this load generator and the CPU
    pool on CPU 0, the CPU pool at nice 19 so it gets only the cycles nothing else there wants."""
    gpu, cpu = (next(pool for pool in stack["pools"] if pool["name"] == name) for name in ("gpu", "cpu"))
    settings = [(tid, {0}, None) for tid in threads_of(stack["supervisor_pid"]) + threads_of(os.getpid())]
    settings += [(tid, {0}, 19) for tid in threads_of(cpu["pid"])]
    settings += [(tid, {1}, None) for tid in threads_of(gpu["pid"])]  # last: the pools may be the supervisor's children
    for tid, cpus, niceness in settings:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)
            if niceness is not None:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)


def cpu_seconds_by_role(status: dict) -> dict[str, float]:
    """CPU time so far of the stack's processes by role, and of this load generator."""
    roles = {process.pid: process.role for process in stack_processes(status)}
    totals: dict[str, float] = {}
    for process in [*psutil.Process(status["supervisor_pid"]).children(recursive=True), psutil.Process()]:
        role = "load generator" if process.pid == os.getpid() else roles.get(process.pid, "Ray and launchers")
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


async def measure(status: dict, url: str, pool_url: str, bodies: list[bytes], seconds: float,
                  prober: ProcessPoolExecutor) -> None:
    """Premium and the 429 probe are timed by `probe` in `prober`'s processes; this event loop
    only generates the load around them."""
    gateway_url = url.removesuffix("/predictions/resnet18")
    half = len(bodies) // 2
    loop = asyncio.get_running_loop()

    def probing(tier, some_bodies, interval, duration):
        return loop.run_in_executor(prober, probe, url, some_bodies, tier, interval, duration)

    # aiohttp: httpx's client queues requests itself at this concurrency, which would be
    # counted as gateway latency.
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        capacity_status = await closed(client, url, bodies[:2000], "batch", seconds, clients=4)
        capacity = capacity_status.count(200) / seconds
        print(f"CPU pool capacity through the gateway (batch, c=4): {capacity:.1f} rps")
        split = PremiumSplit(gateway_url)
        alone = await probing("premium", bodies[2000:4000], 0, seconds)
        alone_split = split.report()
        busy_task = asyncio.create_task(closed(client, pool_url, bodies[half - 2000:half], "batch", seconds, clients=4))
        await asyncio.sleep(1)
        split = PremiumSplit(gateway_url)
        contended = await probing("premium", bodies[4000:5000], 0, seconds - 1)
        contended_split = split.report()
        await busy_task
        flood_task = asyncio.create_task(open_loop(client, url, bodies[half:], "batch", 3 * capacity, seconds))
        await asyncio.sleep(1)  # let the flood build up before measuring premium
        split = PremiumSplit(gateway_url)
        shed_before = shed_time(gateway_url)
        cpu_before, began = cpu_seconds_by_role(status), time.perf_counter()
        loaded, probed = await asyncio.gather(probing("premium", bodies[5000:half - 2000], 0, seconds - 1),
                                              probing("batch", bodies[:100], 0.01, seconds - 1))
        cpu_after, elapsed = cpu_seconds_by_role(status), time.perf_counter() - began
        loaded_split = split.report()
        shed_s, shed_count = (after - before for before, after in zip(shed_before, shed_time(gateway_url)))
        flood = await flood_task

    def summary(outcomes):
        times = [took for _, took in outcomes]
        return f"p99 {p99(times):7.1f} ms  ({len(outcomes)} requests, errors {sum(s != 200 for s, _ in outcomes)}"

    shed = [took for status, took in probed if status == 429]
    flood_shed = [took for status, took in flood if status == 429]
    print(f"premium alone:           {summary(alone)})")
    print(f"  {alone_split}")
    print(f"premium, CPU pool busy:  {summary(contended)}; pool loaded directly, no gateway)")
    print(f"  {contended_split}")
    print(f"premium under the flood: {summary(loaded)})")
    print(f"  {loaded_split}")
    print(f"batch flood at {3 * capacity:.1f} rps: {len(flood)} sent, "
          f"{sum(s == 200 for s, _ in flood)} served, {len(flood_shed)} got 429, "
          f"{sum(s not in (200, 429) for s, _ in flood)} other; "
          f"a 429 as the flood's own event loop times it: p99 {p99(flood_shed):.1f} ms")
    cores = {role: (cpu_after[role] - cpu_before.get(role, 0.0)) / elapsed for role in cpu_after}
    print("  cores used meanwhile: " + ", ".join(f"{role} {used:.2f}" for role, used in sorted(cores.items(), key=lambda item: -item[1])))
    if shed_count:
        print(f"  a 429's mean time in the gateway: {1000 * shed_s / shed_count:.2f} ms over {shed_count:.0f}")
    print(f"batch probe (10 ms apart, blocking client): {len(shed)} of {len(probed)} got 429, "
          f"p50 {1000 * sorted(shed)[len(shed) // 2] if shed else float('nan'):.1f} ms")
    alone_p99, contended_p99, loaded_p99 = (p99([s for _, s in phase]) for phase in (alone, contended, loaded))
    print(f"ratio premium p99 flood/alone: {loaded_p99 / alone_p99:.2f}   flood/busy pool: {loaded_p99 / contended_p99:.2f}"
          f"   p99 time to a 429: {p99(shed):.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--premium-ms", type=float, default=35.0,
                        help="the stand-in premium pool's answer time (the local one's mean call here: 31-36 ms)")
    parser.add_argument("--cpu-ms", type=float, default=25.0,
                        help="the stand-in CPU pool's (2 calls at a time: about the local one's 85 rps)")
    args = parser.parse_args()
    config = base_config(coalesce=False)
    config["pools"]["cpu"].update(max_concurrency=2, max_queue=4)
    config["pools"]["cpu"]["local"]["token_auth"] = False  # the contention phase loads the pool straight
    config["tiers"] = {
        "premium": {"pools": ["gpu", "cpu"], "priority": 2, "deadline_ms": 5000, "sheddable": False},
        "standard": {"pools": ["cpu"], "priority": 1, "deadline_ms": 10000},
        "batch": {"pools": ["cpu"], "priority": 0, "deadline_ms": 30000},
    }
    bodies = distinct_jpegs(20000, seed=3)
    spawn = multiprocessing.get_context("spawn")  # not fork: a fork would copy this process's event loop
    # started now, so no probe is timed with a process start in it
    prober = ProcessPoolExecutor(2, mp_context=spawn)
    list(prober.map(time.sleep, [0.5, 0.5]))

    def run(placement: str, pools: dict, stand_ins: dict[str, float], pin: bool = False) -> None:
        """Measure with the named pools replaced by stand-ins answering after the given seconds."""
        servers = []
        for port, (name, wait_s) in enumerate(stand_ins.items(), start=8070):
            servers.append(spawn.Process(target=stand_in_pool, args=(port, wait_s), daemon=True))
            servers[-1].start()
            pools = {**pools, name: {**pools[name], "url": f"http://127.0.0.1:{port}"}}
            pools[name].pop("local", None)
            pools[name].pop("metrics_url", None)
        with running_stack({**config, "pools": pools}) as stack:
            where = stack, stack["gateway_url"] + "/predictions/resnet18", pools["cpu"]["url"] + "/predictions/resnet18"
            print(f"\n== {placement}")
            asyncio.run(measure(*where, bodies, args.seconds, prober))
            if pin:
                give_premium_pool_a_core(stack)  # pins this process too: last
                print("\n== premium pool alone on CPU 1; the rest on CPU 0, the CPU pool at nice 19 there")
                asyncio.run(measure(*where, bodies[::-1], args.seconds, prober))
        for server in servers:
            server.terminate()

    premium_s, cpu_s = args.premium_ms / 1000, args.cpu_ms / 1000
    with prober:
        run(f"both pools on other machines: stand-ins answering after {args.premium_ms:.0f} ms (premium) "
            f"and {args.cpu_ms:.0f} ms (CPU pool)", config["pools"], {"gpu": premium_s, "cpu": cpu_s})
        run(f"premium pool on another machine: a stand-in answering after {args.premium_ms:.0f} ms",
            config["pools"], {"gpu": premium_s})
        run("pools share the cores with each other", config["pools"], {}, pin=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
