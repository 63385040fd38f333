"""The in-process limit of the int8 model: what a pool could serve if HTTP, queues and
batching cost nothing.

The int8 AOTInductor package is taken from the MAR and run in batched forward passes, in as
many processes as the pool has workers, each at the pool's torch thread count, all at
once (the pool's compute share of the machine). The best batch size gives the limit;
the handler's image preprocessing (decode, resize, normalize) is timed separately,
since a TorchServe worker does it serially before each forward pass.

    python -m bench.model_limit [--mar artifacts/model-store/resnet18-int8.mar] [--threads 1] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_MAR = Path("artifacts/model-store/resnet18-int8.mar")
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
IMAGE_SIZE = 224


@dataclass(frozen=True)
class ModelLimit:
    threads: int
    workers: int
    images_per_s_by_batch: dict[int, float]
    preprocess_ms: float  # one image through the handler's decode + transforms, one worker

    @property
    def best_batch(self) -> int:
        return max(self.images_per_s_by_batch, key=self.images_per_s_by_batch.get)

    @property
    def images_per_s(self) -> float:
        return self.images_per_s_by_batch[self.best_batch]

    @property
    def with_preprocessing(self) -> float:
        """The limit when each worker also preprocesses its images serially, as TorchServe's do."""
        forward_ms = 1000 * self.workers / self.images_per_s
        return 1000 * self.workers / (forward_ms + self.preprocess_ms)

    def summary(self) -> dict:
        return {
            **asdict(self),
            "best_batch": self.best_batch,
            "images_per_s": round(self.images_per_s, 1),
            "with_preprocessing": round(self.with_preprocessing, 1),
        }


def package_from_mar(mar: Path, into: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".aoti.pt2"))
        archive.extract(name, into)
    return into / name


def _worker(
    model_path: str, threads: int, batch_sizes: tuple[int, ...], window_s: float,
    start: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue, image: bytes | None,
) -> None:
    import torch

    torch.set_num_threads(threads)
    module = torch._inductor.aoti_load_package(model_path)
    rates = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            batch = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
            module(batch)  # warm-up outside the window
            start.wait()  # every worker measures this batch size at the same time
            began, images = time.perf_counter(), 0
            while time.perf_counter() - began < window_s:
                module(batch)
                images += batch_size
            rates[batch_size] = images / (time.perf_counter() - began)
    preprocess_ms = float("nan")
    if image is not None:
        from torchserve_backend.handler import request_to_tensor

        began, count = time.perf_counter(), 0
        while time.perf_counter() - began < window_s:
            request_to_tensor(image, 10**9)
            count += 1
        preprocess_ms = 1000 * (time.perf_counter() - began) / count
    results.put((rates, preprocess_ms))


def measure(
    mar: Path, threads: int, workers: int, image: bytes, batch_sizes: tuple[int, ...] = BATCH_SIZES,
    window_s: float = 3.0,
) -> ModelLimit:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tiergate-model-limit-") as scratch:
        model_path = str(package_from_mar(mar, Path(scratch)))
        start, results = context.Barrier(workers), context.Queue()
        processes = [
            context.Process(
                target=_worker,
                args=(model_path, threads, batch_sizes, window_s, start, results, image if index == 0 else None),
            )
            for index in range(workers)
        ]
        for process in processes:
            process.start()
        answers = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
    totals = {batch: round(sum(rates[batch] for rates, _ in answers), 1) for batch in batch_sizes}
    preprocess_ms = next(ms for _, ms in answers if not math.isnan(ms))
    return ModelLimit(threads, workers, totals, round(preprocess_ms, 3))


def main() -> None:
    from bench.slice import cat_jpeg

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mar", type=Path, default=DEFAULT_MAR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--window-s", type=float, default=3.0)
    args = parser.parse_args()
    limit = measure(args.mar, args.threads, args.workers, cat_jpeg(), window_s=args.window_s)
    print(json.dumps(limit.summary(), indent=2))


if __name__ == "__main__":
    main()
