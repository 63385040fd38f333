"""The digits quantization check: real accuracy numbers and a gate that can fail."""

from __future__ import annotations

import numpy as np
import pytest

from model.agreement import AgreementError
from model.digits import (
    DigitsSettings,
    calibration_subset,
    digits_report,
    enforce_threshold,
    load_digits_split,
    run_digits_check,
    train_digits_model,
)
from model.quantize import quantize_int8

SETTINGS = DigitsSettings.fast()


@pytest.fixture(scope="module")
def trained():
    split = load_digits_split(SETTINGS.test_fraction, seed=0)
    return split, train_digits_model(split, SETTINGS, seed=0)


def test_fast_check_trains_quantizes_and_reports(tmp_path):
    calibration_path = tmp_path / "calibration" / "digits-calibration.npz"
    report = run_digits_check(SETTINGS, seed=0, threshold=0.99, calibration_path=calibration_path)

    assert report["passed"]
    assert report["fp32_top1_accuracy"] > 0.9
    assert report["int8_top1_accuracy"] > 0.9
    assert report["top1_agreement"] >= 0.99
    assert report["test_samples"] == 450  # a quarter of sklearn's 1797 digits, held out
    saved = np.load(calibration_path)["images"]
    assert saved.shape == (SETTINGS.calibration_samples, 1, 8, 8)


def test_calibration_never_uses_test_images(trained):
    split, _ = trained
    calibration = calibration_subset(split, 64, seed=0).reshape(64, -1)
    test = split.test_images.reshape(len(split.test_images), -1)
    train = split.train_images.reshape(len(split.train_images), -1)

    assert all((train == row).all(dim=1).any() for row in calibration)
    assert not any((test == row).all(dim=1).any() for row in calibration)


def test_broken_quantization_fails_the_gate(trained):
    split, model = trained
    calibration = calibration_subset(split, SETTINGS.calibration_samples, seed=0)
    # A classic bug: calibrating on differently scaled inputs than serving sees.
    broken = quantize_int8(model, [calibration * 0.02])
    report = digits_report(model, broken, split, threshold=0.99)

    assert not report["passed"]
    assert report["top1_agreement"] < 0.5
    with pytest.raises(AgreementError, match="below the threshold 0.99") as raised:
        enforce_threshold(report)
    assert raised.value.report is report


def test_correct_quantization_passes_the_same_gate(trained):
    split, model = trained
    calibration = calibration_subset(split, SETTINGS.calibration_samples, seed=0)
    report = digits_report(model, quantize_int8(model, [calibration]), split, threshold=0.99)

    enforce_threshold(report)
    assert report["passed"]
