"""A real (reduced) resnet18 build: artifact contract, report, rebuild skipping, failing gate."""

from __future__ import annotations

import json
import logging
import time
import zipfile

import numpy as np
import pytest
import torch

from model import build as build_module
from model.agreement import AgreementError
from model.artifacts import ModelPaths, compute_input_hash, is_up_to_date
from model.build import build_models, imagenet_labels
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
    record = out / "models" / "resnet18"
    assert built.rebuilt
    for variant in ("fp32", "int8", "gpu"):
        mar = out / "model-store" / f"resnet18-{variant}.mar"
        assert mar.is_file() and built.mar_path(variant) == mar
        assert built.manifest["mars"][f"resnet18-{variant}.mar"]["variant"] == variant
        manifest = read_mar(mar, "MAR-INF/MANIFEST.json")["model"]
        assert (manifest["modelName"], manifest["modelVersion"], manifest["handler"]) == (
            "resnet18",
            "1.0",
            "handler.py",
        )
        spec = read_mar(mar, "variant.json")
        assert spec["variant"] == variant and spec["arch"] == "resnet18" and spec["kind"] == "image"
        assert len(read_mar(mar, "index_to_name.json")) == 1000
        with zipfile.ZipFile(mar) as archive:  # the handler's modules ride along
            assert {"tiergate_backends.py", "tiergate_images.py", "tiergate_text.py"} <= set(archive.namelist())
    saved = json.loads((record / "build.json").read_text())
    assert saved == built.manifest
    assert saved["arch"] == "resnet18" and saved["recipe"] == "resnet18" and saved["seed"] == 0
    assert saved["model_name"] == "resnet18" and len(saved["input_hash"]) == 64
    calibration = np.load(record / saved["calibration"]["resnet18"])["images"]
    assert calibration.shape[1:] == (224, 224, 3) and calibration.dtype == np.uint8
    assert (record / saved["calibration"]["digits"]).is_file()
    assert json.loads((out / "accuracy-report.json").read_text())["resnet18"] == built.report()
    assert not list((out / "models").glob(".staging*"))


def test_backends_are_honest_on_a_host_without_cuda(built):
    if torch.cuda.is_available():
        pytest.skip("documents a host without CUDA")
    mars = built.manifest["mars"]
    assert mars["resnet18-int8.mar"]["backend"] == "cpu-int8"
    assert mars["resnet18-fp32.mar"]["backend"] == "cpu-fp32"
    gpu = mars["resnet18-gpu.mar"]
    assert gpu["tensorrt_compiled"] is False
    assert gpu["backend"] == "cpu-fp32" and gpu["backend_on_cuda_host"] == "inductor-cuda"
    assert "tensorrt" not in json.dumps(read_mar(built.mar_path("gpu"), "variant.json"))


def test_report_has_digits_accuracy_and_photo_agreement(built):
    report = built.report()
    assert report["passed"] and report["input_hash"] == built.manifest["input_hash"]
    digits = report["digits"]
    assert digits["passed"] and digits["fp32_top1_accuracy"] > 0.9 and digits["top1_agreement"] >= 0.99
    photos = report["photos"]
    assert photos["backends"]["fp32"] == "cpu-fp32" and photos["backends"]["int8"] == "cpu-int8"
    # int8 really differs from fp32 numerically, but stays close...
    assert 0 < photos["int8_vs_fp32"]["logit_relative_error"] < 0.3
    assert photos["int8_vs_fp32"]["logit_cosine_similarity"] > 0.98
    # ...while the gpu MAR runs the very same fp32 program on a host without CUDA.
    if photos["backends"]["gpu"] == "cpu-fp32":
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
    paths = ModelPaths(built.out_dir, "resnet18")
    assert is_up_to_date(paths, current)
    assert not is_up_to_date(paths, compute_input_hash([], {"seed": 1}))
    assert compute_input_hash([], {"seed": 0}) != compute_input_hash([], {"seed": 1})
    assert compute_input_hash([], {"seed": 0}) == compute_input_hash([], {"seed": 0})
    assert not is_up_to_date(ModelPaths(tmp_path, "resnet18"), current)  # no build.json at all

    copy = ModelPaths(tmp_path / "copy", "resnet18")
    copy.record_dir.mkdir(parents=True)
    copy.model_store.mkdir()
    for path in (paths.manifest, paths.report):
        (copy.record_dir / path.name).write_bytes(path.read_bytes())
    for variant in ("fp32", "int8"):  # the gpu MAR went missing
        (copy.model_store / f"resnet18-{variant}.mar").touch()
    assert not is_up_to_date(copy, current)


def test_failing_gate_keeps_the_previous_build(built):
    record = built.out_dir / "models" / "resnet18"
    manifest_before = (record / "build.json").read_text()
    report_before = (record / "accuracy-report.json").read_text()
    mar_time = built.mar_path("int8").stat().st_mtime_ns

    with pytest.raises(AgreementError, match="resnet18: digits int8/fp32 top-1 agreement") as raised:
        build_models(built.out_dir, "resnet18", **REDUCED, agreement_threshold=1.01)

    assert raised.value.report["passed"] is False
    assert (record / "build.json").read_text() == manifest_before
    assert (record / "accuracy-report.json").read_text() == report_before
    assert built.mar_path("int8").stat().st_mtime_ns == mar_time
    failed_report = json.loads((record / "failed-report.json").read_text())
    assert failed_report["passed"] is False and failed_report["input_hash"] != built.manifest["input_hash"]
    assert not list((built.out_dir / "models").glob(".staging*"))


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
