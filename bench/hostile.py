"""Premium under slow-client attacks, beside the same load without them, in one run.

    unshare --net -- sh -c 'ip link set lo up && exec "$@"' isolated .venv/bin/python -m bench.hostile

Starts the bundled stack, then runs the same premium closed loop (--concurrency callers,
each call on a fresh connection, as a new caller would come, distinct images so nothing
is coalesced) for --seconds in each phase: no attack; 4,200 slowloris connections from 21
addresses (more than Ray's HAProxy default of 4,096 connections); 300 slow uploads (each
past HAProxy's buffer, so it holds a replica slot until cut off); no attack again. The
attacks run in their own process (bench/slow_clients.py) and have --ramp seconds to open
before the load starts. Prints one table: success rate, p50 and p99 per phase, p99 as a
multiple of the first fault-free phase, and how many attack connections were open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from itertools import count

import httpx

from bench.slow_clients import PATH
from bench.stack import base_config, distinct_jpegs, running_stack

ATTACKS = {
    # A header line every 5 s: the attacker's own CPU (one Python process) stays small beside the stack's.
    "4,200 slowloris connections": ["slowloris", "--connections", "4200", "--sources", "21", "--every", "5"],
    "300 slow uploads": ["slow-upload", "--connections", "300", "--sources", "3"],
}


async def premium_load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    numbers = count()
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)  # a fresh connection each call
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30.0, limits=limits) as client:

        async def caller() -> None:
            while time.monotonic() < stop_at:
                body = bodies[next(numbers) % len(bodies)]
                started = time.perf_counter()
                try:
                    response = await client.post(PATH, content=body, headers={"X-SLA-Tier": "premium", "Content-Type": "image/jpeg"})
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if outcome == "200":
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    failures[outcome] = failures.get(outcome, 0) + 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    latencies.sort()
    total = len(latencies) + sum(failures.values())
    return {
        "requests": total,
        "success": len(latencies) / total if total else 0.0,
        "failures": failures,
        "p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
    }


def phase(url: str, bodies: list[bytes], attack: list[str] | None, args) -> dict:
    attacker = None
    children_cpu = _children_cpu_s()
    if attack:
        attacker = subprocess.Popen(
            [sys.executable, "-m", "bench.slow_clients", *attack, "--url", url,
             "--seconds", str(args.ramp + args.seconds + 2), "--ramp", str(args.ramp)],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(args.ramp)
    result = asyncio.run(premium_load(url, bodies, args.concurrency, args.seconds))
    if attacker is not None:
        out, _ = attacker.communicate(timeout=args.seconds + 120)
        result["attack"] = json.loads(out.splitlines()[-1])
        # The attacker shares the stack's CPUs (a real one would not): what it took explains part of the slowdown.
        result["attack"]["cpu_s"] = round(_children_cpu_s() - children_cpu, 1)
    return result


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument(
        "--header-timeout", type=int, default=None,
        help="the stack's header_timeout_s (default: the bundled 10 s, which cuts every slowloris connection"
        " after 10 s, so the attacker must reopen ~420 a second to keep 4,200 open)",
    )
    args = parser.parse_args(argv)
    bodies = distinct_jpegs(512)
    overrides = {} if args.header_timeout is None else {"header_timeout_s": args.header_timeout}
    with running_stack(base_config(coalesce=False, **overrides)) as status:
        url = status["gateway_url"]
        phases = {"no attack": phase(url, bodies, None, args)}
        for name, attack in ATTACKS.items():
            phases[name] = phase(url, bodies, attack, args)
        phases["no attack, again"] = phase(url, bodies, None, args)
    baseline = phases["no attack"]["p99_ms"]
    print(f"premium, {args.concurrency} callers on fresh connections, {args.seconds:.0f} s a phase;"
          f" header_timeout_s {args.header_timeout or 'bundled'};"
          f" load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}\n")
    print("| phase | premium calls | success | p50 ms | p99 ms | p99 / no attack | attack connections open (mean) | attacker CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in phases.items():
        attack = result.get("attack")
        open_mean = f"{attack['open_mean']} (cut off and reopened {attack['opened'] - attack['connections']}x)" if attack else "-"
        print(
            f"| {name} | {result['requests']} | {100 * result['success']:.2f} % | {result['p50_ms']:.0f} |"
            f" {result['p99_ms']:.0f} | x{result['p99_ms'] / baseline:.2f} | {open_mean} | {attack['cpu_s'] if attack else '-'} |"
        )
    failed = {name: result["failures"] for name, result in phases.items() if result["failures"]}
    if failed:
        print(f"\nfailures: {failed}")
    print(json.dumps(phases), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
