"""The recipes behind a model's `build:`: per-model manifests that never overwrite each other,
quality gates that fail naming the model and the figure, and clear errors for bad recipes."""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile

import pytest

from model import digits_mlp, text_sentiment
from model.agreement import AgreementError
from model.artifacts import quality_failures
from model.recipes import RECIPES, UnknownRecipe, build_model

# Fewer digits epochs than the shipped recipe: still far above the gates, in a few seconds.
DIGITS = digits_mlp.DigitsMlpSettings(epochs=15)
TEXT = text_sentiment.TextSentimentSettings()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    digits = digits_mlp.build(out, "digits", settings=DIGITS)
    text = text_sentiment.build(out, "sentiment", settings=TEXT)
    return out, digits, text


def read_mar(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def test_each_model_keeps_its_own_manifest_and_report_section(artifacts):
    out, digits, text = artifacts
    for result, name in ((digits, "digits"), (text, "sentiment")):
        saved = json.loads((out / "models" / name / "build.json").read_text())
        assert saved == result.manifest and saved["model_name"] == name and saved["model_version"] == "1.0"
        assert sorted(saved["mars"]) == sorted(f"{name}-{variant}.mar" for variant in ("fp32", "int8", "gpu"))
        assert all((out / "model-store" / mar).is_file() for mar in saved["mars"])
    index = json.loads((out / "accuracy-report.json").read_text())
    assert set(index) == {"digits", "sentiment"}
    assert index["digits"]["recipe"] == "digits-mlp" and index["sentiment"]["recipe"] == "text-sentiment"


def test_digits_variants_are_tensor_mars_and_pass_their_gate(artifacts):
    _, digits, _ = artifacts
    report = digits.report()
    assert report["passed"] and report["fp32_top1_accuracy"] >= 0.9 and report["int8_top1_agreement"] >= 0.97
    assert report["backends"]["int8"] == report["cpu_pool"]["backend"]  # cpu-int8 where int8 measured faster
    spec = json.loads(read_mar(digits.mar_path("int8"), "variant.json"))
    assert spec["kind"] == "tensor" and spec["inputs"][0] == {"name": "features", "datatype": "FP32", "shape": [-1, 64]}
    manifest = json.loads(read_mar(digits.mar_path("gpu"), "MAR-INF/MANIFEST.json"))["model"]
    assert (manifest["modelName"], manifest["modelVersion"], manifest["handler"]) == ("digits", "1.0", "handler.py")


def test_sentiment_is_a_text_mar_with_its_vocabulary(artifacts):
    _, _, text = artifacts
    report = text.report()
    assert report["passed"] and report["fp32_held_out_accuracy"] >= 0.9 and report["int8_top1_agreement"] >= 0.97
    mar = text.mar_path("int8")
    assert json.loads(read_mar(mar, "variant.json"))["kind"] == "text"
    assert json.loads(read_mar(mar, "index_to_name.json")) == {"0": "negative", "1": "positive"}
    assert json.loads(read_mar(mar, "vocab.json"))["tokens"][:2] == ["<pad>", "<unk>"]


def test_unchanged_inputs_skip_the_rebuild(artifacts, caplog):
    out, digits, _ = artifacts
    mar_time = digits.mar_path("int8").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="model.build"):
        again = digits_mlp.build(out, "digits", settings=DIGITS)
    assert not again.rebuilt and again.manifest == digits.manifest
    assert "digits is up to date" in caplog.text
    assert digits.mar_path("int8").stat().st_mtime_ns == mar_time


def test_a_failed_int8_gate_names_model_and_figure_and_keeps_the_previous_build(artifacts):
    out, digits, _ = artifacts
    manifest_before = (out / "models" / "digits" / "build.json").read_text()
    impossible = dataclasses.replace(DIGITS, min_int8_agreement=1.01)

    with pytest.raises(AgreementError, match=r"digits: int8_top1_agreement 1\.0000 is below the threshold 1\.01"):
        digits_mlp.build(out, "digits", settings=impossible)

    assert (out / "models" / "digits" / "build.json").read_text() == manifest_before
    failed = json.loads((out / "models" / "digits" / "failed-report.json").read_text())
    assert failed["passed"] is False and len(failed["failures"]) == 1
    assert not list((out / "models").glob(".staging*"))


def test_quality_failures_list_only_the_figures_below_their_minimum():
    figures = {"fp32_top1_accuracy": 0.85, "int8_top1_agreement": 0.99}
    minimums = {"fp32_top1_accuracy": 0.9, "int8_top1_agreement": 0.97}
    assert quality_failures(figures, minimums) == ["fp32_top1_accuracy 0.8500 is below the threshold 0.9"]
    assert quality_failures(figures, {"int8_top1_agreement": 0.97}) == []


def test_unknown_recipe_names_the_model_and_the_choices(tmp_path):
    with pytest.raises(UnknownRecipe, match=r"model 'digits': unknown build recipe 'digits-cnn'; choose one of \["):
        build_model(tmp_path, "digits", "digits-cnn")
    assert not list(tmp_path.iterdir())


def test_a_mar_name_only_fits_a_single_mar_recipe(tmp_path):
    with pytest.raises(ValueError, match="builds digits-<variant>.mar for each pool variant"):
        build_model(tmp_path, "digits", "digits-mlp", mar="digits.mar")


def test_every_recipe_the_bundled_config_names_exists():
    from gateway.cli import default_config
    from gateway.config import load_config

    config = load_config(default_config())
    assert {model.build for model in config.models.values() if isinstance(model.build, str)} <= set(RECIPES)


def test_the_cpu_pool_mar_of_a_recipe_runs_what_its_build_measured(artifacts):
    """Never a silent int8: the int8 MAR holds int8 only when the build measured it faster."""
    _, digits, text = artifacts
    for result in (digits, text):
        report = result.report()
        faster = report["speed"]["batch_8"]["int8_speedup"] > 1.0
        artifacts_held = list(json.loads(read_mar(result.mar_path("int8"), "variant.json"))["artifacts"])
        assert artifacts_held == (["int8-aoti-package", "fp32-exported-program"] if faster else ["fp32-exported-program"])
        assert report["cpu_pool"]["backend"] == ("cpu-int8" if faster else "cpu-fp32") == report["backends"]["int8"]
        assert result.manifest["cpu_pool"] == report["cpu_pool"]
        assert result.manifest["mars"][result.mar_path("int8").name]["backend"] == report["cpu_pool"]["backend"]
