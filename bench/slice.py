"""Issue 2's figures: time from `tiergate up` to ready, and c=1 / c=4 load through the
gateway versus directly against each pool, all in one run on one machine.

Run inside a private network namespace (Ray binds every address):
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.slice'
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench.loadgen import closed_loop
from bench.stack import base_config, cat_jpeg, running_stack


async def measure(status: dict, seconds: float) -> list:
    body = cat_jpeg()
    pools = {pool["name"]: pool["inference_url"] for pool in status["pools"]}
    gateway = status["gateway_url"]
    results = []
    for concurrency in (1, 4):
        for tier, pool in (("premium", "gpu"), ("standard", "cpu")):
            # Alternate direct and gateway so drift on a noisy machine hits both alike.
            results.append(await closed_loop(
                f"direct {pool} pool", f"{pools[pool]}/predictions/resnet18", body, {}, concurrency, seconds))
            results.append(await closed_loop(
                f"gateway {tier} -> {pool}", f"{gateway}/predictions/resnet18", body,
                {"X-SLA-Tier": tier}, concurrency, seconds))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    # One image over and over: coalescing would merge the gateway's requests and flatter it.
    with running_stack(base_config(coalesce=False)) as status:
        print(f"tiergate up --detach → ready: {status['ready_s']:.1f} s (supervisor: {status['ready_after_s']} s)")
        results = asyncio.run(measure(status, args.seconds))
    for result in results:
        print(result.row())
    print("\nadded by the gateway (same concurrency, same pool):")
    for direct, through in zip(results[0::2], results[1::2]):
        print(
            f"  {through.name:<26} c={through.concurrency}: p50 +{through.p50 - direct.p50:6.2f} ms, "
            f"throughput ×{through.rps / direct.rps:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
