"""fp32 against int8, measured side by side as the handler runs them, and what the CPU pool's
MAR serves because of it: int8 only when it quantized something and is faster at the pool's
batch on the build host; otherwise the fp32 program, whose workers report cpu-fp32."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from model.artifacts import single_threaded
from torchserve_backend import tiergate_backends as backends

# Per batch size: up to 20 warm-up calls each (first calls of a shape allocate and cache),
# then timed calls for a second; at least 5 each, so a big model at a big batch stays bounded.
SPEED_SECONDS = 1.0
WARM_UP_CALLS, MIN_TIMED_CALLS = 20, 5


def call_seconds(loaded: backends.LoadedModel, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    loaded.logits(batch)
    return time.perf_counter() - started


def measure_speed(fp32: backends.LoadedModel, int8: backends.LoadedModel, rows: torch.Tensor, batch_sizes: list[int]) -> dict:
    """fp32 and int8 rows per second, side by side: calls alternate one by one after the warm-up
    (so a neighbour's burst on a shared CPU hits both alike), and each rate is rows ÷ its median
    call time. On one thread, as a pool worker runs (the pools' `threads`, default 1): with two
    threads on a busy machine a parallel int8 kernel waits for its descheduled half, which
    measured 30-90 ms calls against 0.1 ms alone (the digits MLP) and said nothing about serving."""
    with single_threaded():
        return _measure(fp32, int8, rows, batch_sizes)


def _measure(fp32: backends.LoadedModel, int8: backends.LoadedModel, rows: torch.Tensor, batch_sizes: list[int]) -> dict:
    speed = {"torch_threads": torch.get_num_threads(), "measured": "in the build, as a pool worker runs them: "
             "rows per median call, fp32 and int8 calls alternating"}  # fmt: skip
    for size in batch_sizes:
        batch = rows[:size]
        if len(batch) < size:
            batch = batch.repeat((size // len(batch) + 1,) + (1,) * (batch.dim() - 1))[:size]
        warm_up_started = time.perf_counter()
        for _ in range(WARM_UP_CALLS):
            fp32.logits(batch), int8.logits(batch)
            if time.perf_counter() - warm_up_started > SPEED_SECONDS:
                break
        timings, started = {"fp32": [], "int8": []}, time.perf_counter()
        while len(timings["fp32"]) < MIN_TIMED_CALLS or time.perf_counter() - started < SPEED_SECONDS:
            timings["fp32"].append(call_seconds(fp32, batch))
            timings["int8"].append(call_seconds(int8, batch))
        fp32_rate, int8_rate = (size / statistics.median(timings[v]) for v in ("fp32", "int8"))
        speed[f"batch_{size}"] = {
            "fp32_rows_per_s": round(fp32_rate, 1), "int8_rows_per_s": round(int8_rate, 1),
            "int8_speedup": round(int8_rate / fp32_rate, 2), "calls_each": len(timings["fp32"]),
        }  # fmt: skip
    return speed


def cpu_pool_choice(mode: str, quantization: dict | None, speed: dict | None, pool_batch: int) -> tuple[str, str]:
    """What the CPU pool's MAR runs, and why: int8 only when it quantized something and is faster."""
    if mode == "none":
        return "fp32", "quantize: none"
    if not quantization["quantized_layers"]:
        return "fp32", f"{mode} int8 quantized no layer of this model (no nn.Linear/Conv modules it knows)"
    return faster_on_cpu(speed, pool_batch)


def faster_on_cpu(speed: dict, pool_batch: int) -> tuple[str, str]:
    speedup = speed[f"batch_{pool_batch}"]["int8_speedup"]
    if speedup <= 1.0:
        return "fp32", f"int8 is not faster than fp32 on this CPU at the pool's batch {pool_batch} (x{speedup})"
    return "int8", f"int8 x{speedup} the fp32 rows/s at the pool's batch {pool_batch}"


def serve_faster_on_cpu(work_dir: Path, specs: dict[str, dict], loaded: dict, rows: torch.Tensor, pool_batch: int) -> dict:
    """For a recipe's variants: measure, and make the CPU pool's MAR (variant "int8") hold the fp32
    program when int8 is not faster at the pool's batch. Updates specs and loaded; returns the
    report's speed and cpu_pool sections."""
    speed = measure_speed(loaded["fp32"], loaded["int8"], rows, sorted({1, pool_batch}))
    serves, why = faster_on_cpu(speed, pool_batch)
    if serves == "fp32":
        specs["int8"]["artifacts"] = dict(specs["fp32"]["artifacts"])
        loaded["int8"] = backends.load_model(work_dir, specs["int8"])
    return {"speed": speed, "cpu_pool": {"serves": serves, "backend": loaded["int8"].backend, "why": why}}
