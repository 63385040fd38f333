"""Premium traffic through faults, beside the same load without them (issue 18).

One stack (the bundled config: premium → gpu pool, then cpu), one premium load of distinct
images (no coalescing, no cache hits), the same length for each phase, in one run:

- fault-free, before and after the faults (two rows: this machine's own noise);
- pool killed: the gpu pool's whole process group gets SIGKILL; the supervisor restarts it;
- pool hung: the gpu pool's group is stopped (SIGSTOP) for most of the phase, then resumed;
- reload: the config file is changed and reloaded twice (`tiergate reload`).

Each row: requests, success rate, answers that were not 200 (and calls that got no answer
at all), p50/p99 of every call (failed ones included) and p99 ÷ the first fault-free p99.

    unshare --net -- sh -c 'ip link set lo up && exec "$@"' isolated \\
        .venv/bin/python -m bench.faults --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import signal
import time
from dataclasses import dataclass, field
from itertools import cycle

import httpx

from bench.stack import base_config, distinct_jpegs, running_stack, tiergate

PREDICT = "/predictions/resnet18"


@dataclass
class Phase:
    name: str
    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    @property
    def ok(self) -> int:
        return self.statuses.count(200)

    def row(self, baseline_p99: float) -> str:
        total = len(self.statuses)
        failed = {status: self.statuses.count(status) for status in sorted(set(self.statuses)) if status != 200}
        return (
            f"| {self.name} | {total} | {100 * self.ok / max(total, 1):.2f} % | {failed or '-'} "
            f"| {self.p(0.5):.0f} | {self.p(0.99):.0f} | ×{self.p(0.99) / baseline_p99:.2f} |"
        )


async def premium_load(url: str, bodies: list[bytes], clients: int, seconds: float, phase: Phase) -> None:
    """`clients` closed loops of premium calls for `seconds`; status 0 is a call with no answer."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    stop_at = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60.0, limits=limits) as client:

        async def loop(offset: int) -> None:
            images = cycle(bodies[offset:] + bodies[:offset])
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    status = (await client.post(PREDICT, content=next(images), headers={"X-SLA-Tier": "premium"})).status_code
                except httpx.HTTPError:
                    status = 0
                phase.statuses.append(status)
                phase.latencies_ms.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(loop(i * 7) for i in range(clients)))


def gpu_pool(stack: dict) -> dict:
    status = json.loads(tiergate("status", "--json", "--state-dir", stack["state_dir"]).stdout)
    return next(pool for pool in status["pools"] if pool["name"] == "gpu")


async def wait_until(check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the stack did not recover")
        await asyncio.sleep(0.5)


async def served_by_gpu(url: str) -> bool:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10) as client:
        answer = await client.post(PREDICT, content=distinct_jpegs(1, seed=99)[0], headers={"X-SLA-Tier": "premium"})
    return answer.headers.get("x-tiergate-pool") == "gpu"


async def run(seconds: float, clients: int) -> list[Phase]:
    config = base_config()
    bodies = distinct_jpegs(64, seed=3)
    phases: list[Phase] = []
    with running_stack(config) as stack:
        url = f"http://{config['host']}:{config['port']}"
        fault_at = min(3.0, seconds / 4)

        async def phase(name: str, fault=None) -> None:
            current = Phase(name)
            phases.append(current)
            load = asyncio.create_task(premium_load(url, bodies, clients, seconds, current))
            if fault is not None:
                await asyncio.sleep(fault_at)
                await fault()
            await load
            print(current.row(phases[0].p(0.99)), flush=True)

        async def recovered() -> None:  # gpu pool ready and its breaker closed again
            await wait_until(lambda: gpu_pool(stack)["state"] == "ready", 300)
            deadline = time.monotonic() + 60
            while not await served_by_gpu(url) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)

        async def kill() -> None:
            os.killpg(gpu_pool(stack)["pid"], signal.SIGKILL)

        async def hang() -> None:
            group = gpu_pool(stack)["pid"]
            os.killpg(group, signal.SIGSTOP)
            await asyncio.sleep(seconds - 2 * fault_at)
            os.killpg(group, signal.SIGCONT)

        async def reload() -> None:
            changed = copy.deepcopy(config)
            changed["tiers"]["batch"]["deadline_ms"] = 20_000  # a policy change premium does not see
            for new in (changed, config):
                await asyncio.to_thread(stack["apply"], new)
                await asyncio.sleep(1)

        print("| phase | calls | premium success | not 200 | p50 ms | p99 ms | p99 ÷ fault-free |")
        print("|---|---|---|---|---|---|---|")
        await phase("fault-free")
        await phase("gpu pool killed (SIGKILL, restarted)", kill)
        await recovered()
        await phase("gpu pool hung (SIGSTOP, then SIGCONT)", hang)
        await recovered()
        await phase("config reloaded twice", reload)
        await phase("fault-free again")
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent premium callers")
    args = parser.parse_args(argv)
    asyncio.run(run(args.seconds, args.clients))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
