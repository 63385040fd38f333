"""Issue 19's per-model figure: what the CPU pool's MAR serves ÷ the fp32 MAR, through TorchServe.

Two TorchServe pools (no gateway, no Ray) load every built model of the bundled config: one
the <model>-fp32.mar files, the other the CPU pool's <model>-int8.mar (int8, or fp32 where the
build found int8 no faster). Both get the CPU pool's shipped batching (batch 8, 5 ms), one
worker and one thread. Each model is driven at concurrency 1 (batch 1) and 8 (batches up to
8), the two pools alternating so drift hits both alike; agreement comes from the build.

    unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m bench.model_variants'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from bench.loadgen import closed_loop
from bench.stack import base_config, cat_jpeg, stop_on_sigterm
from gateway.config import parse_config
from gateway.stack import build_artifacts
from torchserve_backend.launcher import PoolProcess, PoolSpec

MODELS = ("resnet18", "digits", "sentiment")
PORTS = {"fp32": 18290, "cpu": 18300}


def request_bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    """One request per model: one image, one row, one sentence."""
    row = load_digits().data[:1].astype(np.float32)
    digits = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 64], "data": row.flatten().tolist()}]}
    json_type = {"Content-Type": "application/json"}
    return {
        "resnet18": (cat_jpeg(), {"Content-Type": "image/jpeg"}),
        "digits": (json.dumps(digits).encode(), json_type),
        "sentiment": (json.dumps({"text": "the film was not good at all"}).encode(), json_type),
    }


def pools_config() -> dict:
    config = base_config()
    config["models"] = {name: config["models"][name] for name in MODELS}
    shipped = config["pools"]["cpu"]["local"]
    config["pools"] = {
        pool: {
            "url": f"http://127.0.0.1:{port}",
            "local": {
                "variant": "fp32" if pool == "fp32" else "int8", "inference_port": port, "management_port": port + 1,
                "metrics_port": port + 2, "threads": 1, "workers": 1,
                "batch_size": shipped["batch_size"], "max_batch_delay_ms": shipped["max_batch_delay_ms"],
            },
        }
        for pool, port in PORTS.items()
    }  # fmt: skip
    config["tiers"] = {"standard": {"pools": ["cpu"]}, "premium": {"pools": ["fp32"]}}
    return config


def cpu_pool_backend(artifacts: Path, model: str) -> str:
    manifest = json.loads((artifacts / "models" / model / "build.json").read_text())
    return manifest["mars"][f"{model}-int8.mar"]["backend"]


def agreement(report: dict) -> str:
    """The int8/fp32 agreement figure each kind of report carries."""
    if "figures" in report:  # a model source (model/byo.py)
        return f"int8 top-1 agreement {report['figures']['int8']['top1_agreement']:.4f} on {report['data']}"
    if "photos" in report:  # the resnet recipe
        digits, photos = report["digits"], report["photos"]["int8_vs_fp32"]
        return (f"int8 top-1 agreement {digits['top1_agreement']:.4f} (digits CNN quantized the same way, "
                f"{digits['test_samples']} held-out images); {photos['top1_agreement']:.3f} on {photos['samples']} "
                f"photo views with random weights (logit cosine {photos['logit_cosine_similarity']:.4f})")  # fmt: skip
    return f"int8 top-1 agreement {report['int8_top1_agreement']:.4f} ({report['data']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    stop_on_sigterm()
    config = parse_config(pools_config())
    build_artifacts(config)
    store = (config.artifacts_dir / "model-store").resolve()
    bodies = request_bodies()
    with tempfile.TemporaryDirectory(prefix="bench-model-variants-") as scratch:
        processes = {pool: PoolProcess(PoolSpec.from_config(config, pool, store, Path(scratch) / pool)) for pool in PORTS}
        try:
            for process in processes.values():
                process.start()
            for process in processes.values():
                process.wait_ready()
            rates: dict[tuple[str, str, int], float] = {}
            for model in MODELS:
                body, headers = bodies[model]
                labels = {"fp32": "cpu-fp32 (fp32 MAR)", "cpu": f"{cpu_pool_backend(config.artifacts_dir, model)} (CPU pool MAR)"}
                for concurrency in (1, 8):
                    for pool, process in processes.items():
                        url = f"{process.spec.inference_url}/predictions/{model}"
                        key = process.spec.inference_token_file.read_text().strip()  # the pools keep token auth on
                        authorized = {**headers, "Authorization": f"Bearer {key}"}
                        result = asyncio.run(closed_loop(f"{model} {labels[pool]}", url, body, authorized, concurrency, args.seconds))
                        rates[model, pool, concurrency] = result.rps
                        print(result.row(), flush=True)
        finally:
            for process in processes.values():
                process.stop()
    index = json.loads((config.artifacts_dir / "accuracy-report.json").read_text())
    print()
    for model in MODELS:
        ratios = ", ".join(
            f"c={c}: x{rates[model, 'cpu', c] / rates[model, 'fp32', c]:.2f}" for c in (1, 8)
        )
        print(f"{model}: CPU pool MAR ({cpu_pool_backend(config.artifacts_dir, model)}) ÷ fp32 MAR, requests/s: {ratios}")
        print(f"  {agreement(index[model])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
