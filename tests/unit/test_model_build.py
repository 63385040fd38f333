"""A real (reduced) resnet18 build: artifact contract, report, rebuild skipping, failing gate."""

from __future__ import annotations

import json
import logging
import time
import zipfile

import numpy as np
import pytest

from model import build as build_module
from model.agreement import AgreementError
from model.build import build_models, compute_input_hash, imagenet_labels, is_up_to_date
from model.digits import DigitsSettings

# Small enough for a unit test; the real build uses more photo views and digits epochs.
REDUCED = dict(digits=DigitsSettings.fast(), calibration_views=1, evaluation_views=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("artifacts"), "resnet18", **REDUCED)


def read_mar(path, name):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(name))


def test_artifact_layout_matches_the_contract(built):
    out = built.out_dir
    assert built.rebuilt
    for variant in ("fp32", "int8", "gpu"):
        mar = out / "model-store" / f"resnet18-{variant}.mar"
        assert mar.is_file() and built.mar_path(variant) == mar
        assert built.manifest["variants"][variant]["mar"] == f"model-store/resnet18-{variant}.mar"
        manifest = read_mar(mar, "MAR-INF/MANIFEST.json")["model"]
        assert (manifest["modelName"], manifest["modelVersion"], manifest["handler"]) == (
            "resnet18",
            "1.0",
            "handler.py",
        )
        spec = read_mar(mar, "variant.json")
        assert spec["variant"] == variant and spec["arch"] == "resnet18"
        assert len(read_mar(mar, "index_to_name.json")) == 1000
    saved = json.loads((out / "build.json").read_text())
    assert saved == built.manifest
    assert saved["arch"] == "resnet18" and saved["seed"] == 0 and len(saved["input_hash"]) == 64
    calibration = np.load(out / saved["calibration"]["resnet18"])["images"]
    assert calibration.shape[1:] == (224, 224, 3) and calibration.dtype == np.uint8
    assert (out / saved["calibration"]["digits"]).is_file()
    assert not (out / ".staging").exists()


def test_backends_are_honest_on_a_host_without_cuda(built):
    variants = built.manifest["variants"]
    assert variants["int8"]["backend"] == "cpu-int8"
    assert variants["fp32"]["backend"] == "cpu-fp32"
    gpu = variants["gpu"]
    assert gpu["tensorrt_compiled"] is False
    assert gpu["backend"] == "cpu-fp32" and gpu["backend_on_cuda_host"] == "inductor-cuda"
    assert "tensorrt" not in json.dumps(read_mar(built.mar_path("gpu"), "variant.json"))


def test_report_has_digits_accuracy_and_photo_agreement(built):
    report = built.report()
    assert report["passed"] and report["input_hash"] == built.manifest["input_hash"]
    digits = report["digits"]
    assert digits["passed"] and digits["fp32_top1_accuracy"] > 0.9 and digits["top1_agreement"] >= 0.99
    photos = report["photos"]
    assert photos["backends"] == {"fp32": "cpu-fp32", "int8": "cpu-int8", "gpu": "cpu-fp32"}
    # int8 really differs from fp32 numerically, but stays close...
    assert 0 < photos["int8_vs_fp32"]["logit_relative_error"] < 0.3
    assert photos["int8_vs_fp32"]["logit_cosine_similarity"] > 0.98
    # ...while the gpu MAR runs the very same fp32 program on this host.
    assert photos["gpu_vs_fp32"]["top1_agreement"] == 1.0
    # BatchNorm recalibration makes a random network tell photos apart.
    assert photos["int8_vs_fp32"]["reference_distinct_top1"] > 1
    assert set(report["latency_ms_batch1"]) >= {"fp32 (cpu-fp32)", "int8 (cpu-int8)"}
    assert "digits (held-out 450 images)" in build_module.format_report(report)


def test_unchanged_inputs_skip_the_rebuild(built, caplog):
    mar_times = {variant: built.mar_path(variant).stat().st_mtime_ns for variant in ("fp32", "int8", "gpu")}
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="model.build"):
        again = build_models(built.out_dir, "resnet18", **REDUCED)

    assert not again.rebuilt
    assert time.perf_counter() - started < 10
    assert "up to date" in caplog.text
    assert again.manifest == built.manifest
    assert mar_times == {variant: again.mar_path(variant).stat().st_mtime_ns for variant in mar_times}


def test_changed_or_missing_inputs_are_not_up_to_date(built, tmp_path):
    current = built.manifest["input_hash"]
    assert is_up_to_date(built.out_dir, current)
    assert not is_up_to_date(built.out_dir, compute_input_hash({"seed": 1}))
    assert compute_input_hash({"seed": 0}) != compute_input_hash({"seed": 1})
    assert compute_input_hash({"seed": 0}) == compute_input_hash({"seed": 0})
    assert not is_up_to_date(tmp_path, current)  # no build.json at all

    copy = tmp_path / "copy"
    (copy / "model-store").mkdir(parents=True)
    for name in ("build.json", "accuracy-report.json"):
        (copy / name).write_bytes((built.out_dir / name).read_bytes())
    for variant in ("fp32", "int8"):  # the gpu MAR went missing
        (copy / "model-store" / f"resnet18-{variant}.mar").touch()
    assert not is_up_to_date(copy, current)


def test_failing_gate_keeps_the_previous_build(built):
    manifest_before = (built.out_dir / "build.json").read_text()
    mar_time = built.mar_path("int8").stat().st_mtime_ns

    with pytest.raises(AgreementError, match="digits int8/fp32 top-1 agreement") as raised:
        build_models(built.out_dir, "resnet18", **REDUCED, agreement_threshold=1.01)

    assert raised.value.report["passed"] is False
    assert (built.out_dir / "build.json").read_text() == manifest_before
    assert built.mar_path("int8").stat().st_mtime_ns == mar_time
    failed_report = json.loads((built.out_dir / "accuracy-report.json").read_text())
    assert failed_report["passed"] is False and failed_report["input_hash"] != built.manifest["input_hash"]
    assert not (built.out_dir / ".staging").exists()


def test_imagenet_labels_are_unique():
    labels = imagenet_labels()
    assert len(set(labels.values())) == 1000
    assert labels[0] == "tench" and labels[999] == "toilet tissue"


def test_unknown_arch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unsupported arch"):
        build_models(tmp_path, "vgg11")


def test_cli_passes_arguments_and_fails_on_a_broken_gate(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_build(out, arch, weights, seed, **options):
        calls.append((out, arch, weights, seed, options))
        raise AgreementError(
            "digits int8/fp32 top-1 agreement 0.5 is below the threshold 0.99", {"digits": {}}
        )

    monkeypatch.setattr(build_module, "build_models", fake_build)
    status = build_module.main(["--arch", "resnet50", "--out", str(tmp_path), "--seed", "3", "--force"])

    assert status == 1
    [(out, arch, weights, seed, options)] = calls
    assert (out, arch, weights, seed) == (tmp_path, "resnet50", None, 3)
    assert options["force"] is True and options["agreement_threshold"] == 0.99
    assert "build failed" in capsys.readouterr().err
