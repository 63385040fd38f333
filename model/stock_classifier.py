"""The stock-image-classifier recipe: a MAR that tiergate's handler does not serve.

A tiny CNN saved as TorchScript and archived with TorchServe's stock ``image_classifier``
handler and an index_to_name.json, so a pool serves it exactly as TorchServe would any
third-party MAR (the gateway passes its requests through untouched). It is trained here
on scikit-learn's 8x8 digits drawn as 256x256 grey RGB images and put through the stock
handler's own preprocessing (Resize 256, CenterCrop 224, ImageNet normalization), so a
JPEG of a digit gets a meaningful answer: {"7": 0.98, ...}, the top 5 digits. The stock
handler needs captum (its vision base class imports it).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from model.agreement import top1_accuracy
from model.archive import archive_mar
from model.artifacts import PACKAGE_DIR, BuildResult, BuiltModel, Staging, build_once, quality_failures, single_threaded

logger = logging.getLogger("model.build")

STOCK_HANDLER = "image_classifier"
SOURCES = (PACKAGE_DIR / "stock_classifier.py",)
IMAGE_SIZE = 256  # a digit is drawn this large, then cropped to 224 by the stock handler


@dataclass(frozen=True)
class StockClassifierSettings:
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 3e-3
    test_fraction: float = 0.25
    min_accuracy: float = 0.9


class TinyDigitCnn(nn.Module):
    """(N, 3, 224, 224) normalized images → 10 digit logits; averages 8x8 blocks away first."""

    def __init__(self):
        super().__init__()
        self.shrink = nn.AvgPool2d(8)  # 224 → 28: a digit is 8x8 pixels, more resolution is waste
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.shrink(images))


def digit_image(pixels: np.ndarray) -> Image.Image:
    """sklearn's 8x8 ink counts (0..16) as a white-on-black 256x256 RGB picture."""
    grey = Image.fromarray((pixels.reshape(8, 8) * (255 / 16)).astype(np.uint8), mode="L")
    return grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).convert("RGB")


def stock_preprocessing():
    """The stock image_classifier handler's own transform, so training sees what serving sees."""
    from ts.torch_handler.image_classifier import ImageClassifier

    return ImageClassifier.image_processing


def shrunk_images(model: TinyDigitCnn, pixels: np.ndarray) -> torch.Tensor:
    """Each digit drawn, preprocessed like the stock handler does, and shrunk by the model's
    first layer (in chunks: a thousand full-size images would take a gigabyte)."""
    transform = stock_preprocessing()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixels), 128):
            batch = torch.stack([transform(digit_image(row)) for row in pixels[start : start + 128]])
            chunks.append(model.shrink(batch))
    return torch.cat(chunks)


def build_stock_classifier(staging: Staging, name: str, mar: str, settings: StockClassifierSettings) -> BuiltModel:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.data, digits.target, test_size=settings.test_fraction, random_state=settings.seed, stratify=digits.target
    )
    torch.manual_seed(settings.seed)
    model = TinyDigitCnn()
    train_labels, test_labels = torch.from_numpy(train_y).long(), torch.from_numpy(test_y).long()
    optimizer = torch.optim.AdamW(model.body.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    with single_threaded():
        train_inputs, test_inputs = shrunk_images(model, train_x), shrunk_images(model, test_x)
        model.train()
        for _ in range(settings.epochs):
            for batch in torch.randperm(len(train_inputs), generator=generator).split(settings.batch_size):
                loss = nn.functional.cross_entropy(model.body(train_inputs[batch]), train_labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
    trained_s = time.perf_counter() - started
    with torch.no_grad():
        figures = {"held_out_accuracy": top1_accuracy(model.body(test_inputs), test_labels)}
    minimums = {"held_out_accuracy": settings.min_accuracy}

    serialized = staging.work_dir / f"{name}.pt"  # .pt: the stock handler loads it with torch.jit.load
    with warnings.catch_warnings(), torch.no_grad():
        # TorchServe's stock handler runs TorchScript, deprecated upstream but its only format.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        torch.jit.save(torch.jit.trace(model, torch.zeros(2, 3, 224, 224)), str(serialized))
    labels = staging.work_dir / "index_to_name.json"
    labels.write_text(json.dumps({str(digit): str(digit) for digit in range(10)}))
    report = {
        "model": name,
        "recipe": "stock-image-classifier",
        "handler": f"TorchServe's stock {STOCK_HANDLER}",
        "data": f"scikit-learn digits drawn at {IMAGE_SIZE}x{IMAGE_SIZE}, stock preprocessing: "
        f"{len(train_x)} training, {len(test_x)} held-out images (stratified, seed {settings.seed})",
        **figures,
        "thresholds": minimums,
        "train_seconds": round(trained_s, 2),
        "settings": asdict(settings),
        "failures": quality_failures(figures, minimums),
    }
    if not report["failures"]:
        archive_mar(name, STOCK_HANDLER, serialized, [labels], staging.model_store / mar)
    return BuiltModel({mar: {"variant": None, "handler": STOCK_HANDLER}}, report, {"accuracy": figures})


def build(
    artifacts_dir: Path,
    name: str,
    *,
    mar: str | None = None,
    force: bool = False,
    settings: StockClassifierSettings | None = None,
) -> BuildResult:
    settings = settings or StockClassifierSettings()
    mar = mar or f"{name}.mar"
    return build_once(
        artifacts_dir, name, "stock-image-classifier", SOURCES, {"settings": asdict(settings), "mar": mar},
        lambda staging: build_stock_classifier(staging, name, mar, settings), force=force,
    )  # fmt: skip
