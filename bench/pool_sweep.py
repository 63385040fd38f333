"""Which int8 pool settings get TorchServe closest to the model's in-process limit.

For each setting (workers, torch threads, batch size, batch delay) one TorchServe pool
is launched the way `tiergate up` launches it, loaded directly with wrk at a few
concurrencies, and compared with the in-process batched limit of the same model at the
same workers × threads (bench/model_limit.py). Run in a private network namespace
(re-executes itself in one), like bench/overhead.py.

    .venv/bin/python -m bench.pool_sweep --setting batch_size=1 --setting batch_size=8 \\
        --setting batch_size=8,threads=2 [--concurrency 8,16,32] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import overhead
from bench.stack import stop_on_sigterm
from gateway.config import LocalLaunch
from torchserve_backend.launcher import PoolProcess, PoolSpec

PORT = 18390
MAR = overhead.ROOT / "artifacts" / "model-store" / "resnet18-int8.mar"


def parse_setting(text: str) -> dict:
    return {key: int(value) for key, value in (item.split("=", 1) for item in text.split(",") if item)}


def launch_settings(overrides: dict) -> LocalLaunch:
    local = {**overhead.shipped_cpu_pool()["local"], **overrides,
             "inference_port": PORT, "management_port": PORT + 1, "metrics_port": PORT + 2,
             "token_auth": False}  # wrk calls the pool straight
    return LocalLaunch.model_validate(local)


def sweep_one(launch: LocalLaunch, args: argparse.Namespace, image: Path, work: Path) -> dict:
    pool = PoolProcess(PoolSpec("sweep", ("resnet18",), (overhead.ROOT / "artifacts" / "model-store").resolve(), launch,
                                work / f"pool-{time.monotonic_ns()}"))
    pool.start()
    try:
        pool.wait_ready()
        url = f"{pool.spec.inference_url}/predictions/resnet18"
        overhead.run_wrk(url, image, "", max(args.concurrency), 3)  # warm-up
        points = []
        for concurrency in args.concurrency:
            busy, began = overhead.machine_busy_s(), time.monotonic()
            pool_before = sum(cpu for _, cpu, _ in overhead.session_cpu({pool.pid}).values())
            summary, wrk_cpu = overhead.run_wrk(url, image, "", concurrency, args.seconds)
            pool_cpu = sum(cpu for _, cpu, _ in overhead.session_cpu({pool.pid}).values()) - pool_before
            wall = time.monotonic() - began
            answered = summary["requests"] - summary["errors"]["status"]
            points.append({
                "concurrency": concurrency,
                "rps": round(answered / (summary["duration_us"] / 1e6), 1),
                "p50_ms": summary["latency_us"]["p50"] / 1000,
                "p99_ms": summary["latency_us"]["p99"] / 1000,
                "errors": sum(summary["errors"].values()),
                "pool_cpu_ms_per_request": round(1000 * pool_cpu / answered, 3) if answered else None,
                "pool_cores": round(pool_cpu / wall, 2),
                "foreign_cores": round(max(0.0, (overhead.machine_busy_s() - busy - pool_cpu - wrk_cpu) / wall), 2),
            })
            point = points[-1]
            print(f"    c={concurrency:<3} {point['rps']:7.1f} rps  p50 {point['p50_ms']:7.1f} ms  "
                  f"pool {point['pool_cpu_ms_per_request']} ms CPU/request on {point['pool_cores']} cores; "
                  f"others used {point['foreign_cores']} cores", flush=True)
        best = max(points, key=lambda p: p["rps"])
        return {"points": points, "best_rps": best["rps"], "pool_cpu_ms_per_request": best["pool_cpu_ms_per_request"]}
    finally:
        pool.stop()


def main(argv: list[str] | None = None) -> int:
    from bench.model_limit import measure
    from bench.slice import cat_jpeg

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", type=parse_setting, action="append", required=True,
                        help="workers=N,threads=N,batch_size=N,max_batch_delay_ms=N (unset: gateway/tiergate.yaml)")
    parser.add_argument("--concurrency", type=overhead.integers, default=[8, 16, 32])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not overhead.in_private_netns():
        return overhead.run_isolated(argv, module="bench.pool_sweep")
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="tiergate-pool-sweep-"))
    image = work / "cat.jpg"
    image_bytes = cat_jpeg()
    image.write_bytes(image_bytes)
    limits: dict[tuple[int, int], dict] = {}
    results = []
    for overrides in args.setting:
        launch = launch_settings(overrides)
        shape = (launch.workers, launch.threads)
        if shape not in limits:
            limits[shape] = measure(MAR, launch.threads, launch.workers, image_bytes).summary()
        limit = limits[shape]
        label = (f"workers={launch.workers} threads={launch.threads} batch_size={launch.batch_size} "
                 f"max_batch_delay_ms={launch.max_batch_delay_ms}")
        print(f"{label}  (in-process limit {limit['images_per_s']:.0f} img/s at batch {limit['best_batch']})",
              flush=True)
        measured = sweep_one(launch, args, image, work)
        share = measured["best_rps"] / limit["images_per_s"]
        # What the pool spent per answer against the forward pass in-process: unlike the
        # throughput share, other processes on a shared machine cannot move it much.
        forward_ms = 1000 * launch.workers * launch.threads / limit["images_per_s"]
        efficiency = forward_ms / measured["pool_cpu_ms_per_request"]
        print(f"  best {measured['best_rps']:.1f} rps = {share:.2f} of the in-process limit; "
              f"CPU efficiency {efficiency:.2f}", flush=True)
        results.append({"setting": launch.model_dump(), "limit": limit, **measured,
                        "share_of_limit": round(share, 3), "cpu_efficiency": round(efficiency, 3)})
    print("\nsetting".ljust(62) + "best rps   share of limit   CPU efficiency")
    for result in sorted(results, key=lambda r: -r["share_of_limit"]):
        s = result["setting"]
        label = f"workers={s['workers']} threads={s['threads']} batch={s['batch_size']} delay={s['max_batch_delay_ms']}ms"
        print(f"{label:<60} {result['best_rps']:8.1f}   {result['share_of_limit']:14.2f}   {result['cpu_efficiency']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
