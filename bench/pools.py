"""Issue 9's pool figure: int8 vs fp32 throughput through TorchServe at saturation.

Both variants run as TorchServe pools with the same worker, thread and batch settings
(the local stack's `gpu` pool runs the fp32 build on this CPU-only machine); each is
driven directly, without the gateway, at increasing concurrency, alternating the pools
so drift hits both alike. Agreement comes from the build's accuracy report.
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.pools'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bench.loadgen import closed_loop
from bench.stack import base_config, distinct_jpegs, running_stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    config = base_config()
    for pool in config["pools"].values():
        pool["local"].update(threads=1, workers=1, batch_size=8, max_batch_delay_ms=5)  # the CPU pool's shipped batching
    body = distinct_jpegs(1, seed=9)[0]
    best: dict[str, float] = {}
    with running_stack(config) as stack:
        urls = {pool["name"]: pool["inference_url"] for pool in stack["pools"]}
        backends = {pool["name"]: pool["backend"] for pool in stack["pools"]}
        for concurrency in (1, 2, 4, 8, 16):  # batch 8 saturates by 16
            for pool in ("gpu", "cpu"):
                result = asyncio.run(closed_loop(
                    f"{backends[pool]} ({pool} pool)", f"{urls[pool]}/predictions/resnet18", body, {},
                    concurrency, args.seconds))
                best[pool] = max(best.get(pool, 0.0), result.rps)
                print(result.row(), flush=True)
    report = json.loads((Path(config["artifacts_dir"]) / "accuracy-report.json").read_text())["resnet18"]
    print(f"\nsaturation: int8 {best['cpu']:.1f} rps vs fp32 {best['gpu']:.1f} rps → ×{best['cpu'] / best['gpu']:.2f}")
    digits, photos = report["digits"], report["photos"]["int8_vs_fp32"]
    print(f"int8/fp32 top-1 agreement: digits model (trained here) {digits['top1_agreement']:.4f} "
          f"on {digits['test_samples']} held-out images; resnet18 (random weights) {photos['top1_agreement']:.3f} "
          f"on {photos['samples']} photo views")
    return 0


if __name__ == "__main__":
    sys.exit(main())
