"""Quantization accuracy check on a small ResNet-style CNN trained on sklearn's digits.

A random-weight ImageNet network cannot show whether int8 keeps accuracy, so
this trains a real (tiny) classifier on data that ships with scikit-learn,
quantizes it the same way the serving models are quantized, and measures fp32
vs int8 top-1 accuracy and agreement on a held-out split.

    python -m model.digits [--epochs N] [--threshold 0.99] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.agreement import AgreementError, compare_logits, top1_accuracy
from model.quantize import quantize_int8

DIGIT_CLASSES = 10


@dataclass(frozen=True)
class DigitsSettings:
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 3e-3
    width: int = 32
    test_fraction: float = 0.25
    calibration_samples: int = 256

    @classmethod
    def fast(cls) -> DigitsSettings:
        """A few seconds of training, for tests."""
        return cls(epochs=6, width=16, calibration_samples=128)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem + two residual stages + global pooling, sized for 8x8 single-channel digits."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = ResidualBlock(width, width, stride=1)
        self.stage2 = ResidualBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, DIGIT_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass
class DigitsSplit:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(test_fraction: float, seed: int) -> DigitsSplit:
    """sklearn's 8x8 digits as (N, 1, 8, 8) floats in [0, 1], split stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return DigitsSplit(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y).long(),
    )


def train_digits_model(split: DigitsSplit, settings: DigitsSettings, seed: int) -> DigitsResNet:
    torch.manual_seed(seed)
    model = DigitsResNet(settings.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = -(-len(split.train_images) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.learning_rate, total_steps=settings.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(split.train_images), generator=generator)
        for batch in order.split(settings.batch_size):
            loss = nn.functional.cross_entropy(model(split.train_images[batch]), split.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def calibration_subset(split: DigitsSplit, samples: int, seed: int) -> torch.Tensor:
    """Calibrate on training images only, so the test split stays held out."""
    generator = torch.Generator().manual_seed(seed + 1)
    chosen = torch.randperm(len(split.train_images), generator=generator)[:samples]
    return split.train_images[chosen]


def digits_report(fp32_model: nn.Module, int8_model: nn.Module, split: DigitsSplit, threshold: float) -> dict:
    with torch.inference_mode():
        fp32_logits = fp32_model(split.test_images)
        int8_logits = int8_model(split.test_images)
    comparison = compare_logits(fp32_logits, int8_logits)
    return {
        "test_samples": len(split.test_labels),
        "fp32_top1_accuracy": top1_accuracy(fp32_logits, split.test_labels),
        "int8_top1_accuracy": top1_accuracy(int8_logits, split.test_labels),
        "top1_agreement": comparison["top1_agreement"],
        "agreement_threshold": threshold,
        "passed": comparison["top1_agreement"] >= threshold,
        "int8_vs_fp32": comparison,
    }


def enforce_threshold(report: dict) -> None:
    if not report["passed"]:
        raise AgreementError(
            f"digits int8/fp32 top-1 agreement {report['top1_agreement']:.4f} "
            f"is below the threshold {report['agreement_threshold']}",
            report,
        )


def run_digits_check(
    settings: DigitsSettings,
    seed: int,
    threshold: float,
    calibration_path: Path | None = None,
) -> dict:
    """Train, quantize and compare; returns the report, raising AgreementError if it fails."""
    started = time.perf_counter()
    split = load_digits_split(settings.test_fraction, seed)
    fp32_model = train_digits_model(split, settings, seed)
    trained = time.perf_counter()
    calibration = calibration_subset(split, settings.calibration_samples, seed)
    int8_model = quantize_int8(fp32_model, calibration.split(settings.batch_size))
    report = digits_report(fp32_model, int8_model, split, threshold)
    report["settings"] = asdict(settings)
    report["seed"] = seed
    report["train_seconds"] = round(trained - started, 2)
    if calibration_path is not None:
        calibration_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(calibration_path, images=calibration.numpy())
        report["calibration_file"] = calibration_path.name
    enforce_threshold(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=DigitsSettings.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--out", type=Path, help="directory for the report and calibration data")
    args = parser.parse_args(argv)

    settings = DigitsSettings(epochs=args.epochs)
    calibration_path = args.out / "calibration" / "digits-calibration.npz" if args.out else None
    try:
        report = run_digits_check(settings, args.seed, args.threshold, calibration_path)
        status = 0
    except AgreementError as error:
        report, status = error.report, 1
        print(f"FAILED: {error}", file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        (args.out / "digits-report.json").write_text(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
