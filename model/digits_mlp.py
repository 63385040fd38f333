"""The digits-mlp recipe: an MLP trained here on scikit-learn's bundled 8x8 digits.

Its input is the 64 pixel values as sklearn gives them (0..16), one row per digit; its
output the 10 class probabilities. Variants: fp32 (ExportedProgram), int8 (dynamic int8
Linear layers, PT2E compiled by AOTInductor) and gpu (the fp32 program: inductor-cuda on a CUDA host,
cpu-fp32 without one; no TensorRT engine is compiled for it). The build fails when
held-out fp32 accuracy or int8/fp32 top-1 agreement is below its threshold.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import variants
from model.agreement import compare_logits, top1_accuracy
from model.artifacts import (
    PACKAGE_DIR,
    BuildResult,
    BuiltModel,
    Staging,
    build_once,
    quality_failures,
    single_threaded,
)
from model.quantize import DYNAMIC, write_int8_package
from model.speed import serve_faster_on_cpu
from torchserve_backend import tiergate_backends as backends

logger = logging.getLogger("model.build")

FEATURES = 64
CLASSES = 10
PIXEL_MAX = 16.0  # sklearn's digits count 0..16 pixels of a 4x4 block as ink
SOURCES = (PACKAGE_DIR / "digits_mlp.py", PACKAGE_DIR / "variants.py", PACKAGE_DIR / "quantize.py", PACKAGE_DIR / "speed.py")


@dataclass(frozen=True)
class DigitsMlpSettings:
    seed: int = 0
    hidden: int = 128
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 3e-3
    test_fraction: float = 0.25
    max_batch_size: int = 256
    pool_batch_size: int = 8  # the CPU pool's batch: int8 must be faster there to be served
    min_fp32_accuracy: float = 0.9
    min_int8_agreement: float = 0.97


class DigitsMlp(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden // 2), nn.ReLU(),
            nn.Linear(hidden // 2, CLASSES),
        )  # fmt: skip
        self.pixel_max = PIXEL_MAX

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Scaled inside the model, so clients send the pixel counts sklearn documents.
        return self.layers(features / self.pixel_max)


def load_split(settings: DigitsMlpSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train features, train labels, test features, test labels), stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    split = train_test_split(
        digits.data.astype(np.float32), digits.target, test_size=settings.test_fraction,
        random_state=settings.seed, stratify=digits.target,
    )  # fmt: skip
    train_x, test_x, train_y, test_y = (torch.from_numpy(part) for part in split)
    return train_x, train_y.long(), test_x, test_y.long()


def train(train_x: torch.Tensor, train_y: torch.Tensor, settings: DigitsMlpSettings) -> DigitsMlp:
    torch.manual_seed(settings.seed)
    model = DigitsMlp(settings.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    for _ in range(settings.epochs):
        for batch in torch.randperm(len(train_x), generator=generator).split(settings.batch_size):
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def build_digits_mlp(staging: Staging, name: str, settings: DigitsMlpSettings) -> BuiltModel:
    started = time.perf_counter()
    train_x, train_y, test_x, test_y = load_split(settings)
    with single_threaded():
        model = train(train_x, train_y, settings)
    trained_s = time.perf_counter() - started

    files = {backends.ARTIFACT_FP32: f"{name}-fp32.pt2", backends.ARTIFACT_INT8: f"{name}-int8.aoti.pt2"}
    dims = ({0: torch.export.Dim("batch", min=1, max=settings.max_batch_size)},)
    exported = torch.export.export(copy.deepcopy(model), (train_x[:2],), dynamic_shapes=dims)
    torch.export.save(exported, str(staging.work_dir / files[backends.ARTIFACT_FP32]))
    write_int8_package(model, train_x[:2], dims, DYNAMIC, staging.work_dir / files[backends.ARTIFACT_INT8])
    specs = variants.variant_specs(
        name, "tensor", settings.max_batch_size, files, [backends.ARTIFACT_FP32],
        inputs=[{"name": "features", "datatype": "FP32", "shape": [-1, FEATURES]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]}],
    )  # fmt: skip

    loaded = variants.load_variants(staging.work_dir, specs)
    logits = {variant: model.logits(test_x) for variant, model in loaded.items()}
    cpu_pool = serve_faster_on_cpu(staging.work_dir, specs, loaded, test_x, settings.pool_batch_size)
    figures = {
        "fp32_top1_accuracy": top1_accuracy(logits["fp32"], test_y),
        "int8_top1_accuracy": top1_accuracy(logits["int8"], test_y),
        "int8_top1_agreement": compare_logits(logits["fp32"], logits["int8"])["top1_agreement"],
    }
    minimums = {"fp32_top1_accuracy": settings.min_fp32_accuracy, "int8_top1_agreement": settings.min_int8_agreement}
    report = {
        "model": name,
        "recipe": "digits-mlp",
        "data": f"scikit-learn digits: {len(train_x)} training, {len(test_x)} held-out rows (stratified, seed {settings.seed})",
        **figures,
        "thresholds": minimums,
        "int8_vs_fp32": compare_logits(logits["fp32"], logits["int8"]),
        "gpu_vs_fp32": compare_logits(logits["fp32"], logits["gpu"]),
        "backends": {variant: model.backend for variant, model in loaded.items()},
        **cpu_pool,
        "train_seconds": round(trained_s, 2),
        "settings": asdict(settings),
        "failures": quality_failures(figures, minimums),
    }
    if not report["failures"]:
        variants.archive_variants(name, staging.work_dir, staging.model_store, specs, [])
    summary = {key: figures[key] for key in figures}
    return BuiltModel(variants.describe_mars(name, specs, loaded), report, {"accuracy": summary, "cpu_pool": cpu_pool["cpu_pool"]})


def build(artifacts_dir: Path, name: str, *, force: bool = False, settings: DigitsMlpSettings | None = None) -> BuildResult:
    settings = settings or DigitsMlpSettings()
    return build_once(
        artifacts_dir, name, "digits-mlp", SOURCES, {"settings": asdict(settings)},
        lambda staging: build_digits_mlp(staging, name, settings), force=force,
    )  # fmt: skip
