"""Bring your own model: builds from each source kind (factory, exported program, torchvision
classifier), the CPU pool's MAR running what the build measured, per-model gates that fail
naming the model and the figure, and bad inputs that fail fast naming the step while the
previous build stays published."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from gateway.model_config import BuildConfig, QualityGates
from model.agreement import AgreementError
from model.recipes import build_model
from model.sources import BuildInputError
from tests.unit import byo_factories

FACTORIES = "tests.unit.byo_factories"


def source(**fields) -> BuildConfig:
    return BuildConfig(**{"kind": "tensor", **fields})


def read_mar(path, name):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(name))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    config = source(factory=f"{FACTORIES}:tiny_mlp", quantize="dynamic", gates=QualityGates(min_top1_agreement=0.95, min_accuracy=0.8))
    return out, config, build_model(out, "tabular", config)


def test_a_factory_builds_three_mars_with_a_report_section(mlp):
    out, _, result = mlp
    assert sorted(result.manifest["mars"]) == ["tabular-fp32.mar", "tabular-gpu.mar", "tabular-int8.mar"]
    report = result.report()
    assert report["passed"] and report["source"] == f"factory {FACTORIES}:tiny_mlp"
    assert report["data"].startswith("rows of the rule (128 calibration rows, 256 evaluation rows, labelled)")
    assert report["figures"]["fp32"]["top1_accuracy"] >= 0.8 and report["figures"]["int8"]["top1_agreement"] >= 0.95
    assert report["quantize"] == {"mode": "dynamic", "method": "pt2e-x86-inductor-dynamic-aoti", "quantized_layers": 2}
    assert set(report["speed"]) >= {"batch_1", "batch_8"} and report["speed"]["batch_8"]["int8_rows_per_s"] > 0
    assert json.loads((out / "accuracy-report.json").read_text())["tabular"] == report
    spec = read_mar(result.mar_path("fp32"), "variant.json")
    assert spec["kind"] == "tensor" and spec["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert read_mar(result.mar_path("fp32"), "index_to_name.json") == {str(i): f"q{i}" for i in range(4)}


def test_the_cpu_pool_mar_runs_what_the_build_measured_never_a_silent_int8(mlp):
    _, _, result = mlp
    report = result.report()
    cpu_pool, speedup = report["cpu_pool"], report["speed"]["batch_8"]["int8_speedup"]
    int8_mar = result.manifest["mars"]["tabular-int8.mar"]
    artifacts = read_mar(result.mar_path("int8"), "variant.json")["artifacts"]
    if speedup > 1.0:
        assert (cpu_pool["serves"], cpu_pool["backend"], list(artifacts)) == ("int8", "cpu-int8", ["int8-aoti-package", "fp32-exported-program"])
    else:
        assert (cpu_pool["serves"], cpu_pool["backend"], list(artifacts)) == ("fp32", "cpu-fp32", ["fp32-exported-program"])
        assert "not faster than fp32" in cpu_pool["why"]
    assert int8_mar["backend"] == report["backends"]["int8"] == cpu_pool["backend"]


def test_static_int8_calibrates_on_batches_larger_than_the_programs_batch_limit(tmp_path):
    # tiny_mlp's calibration batches have 32 rows; the programs take at most 8.
    config = source(factory=f"{FACTORIES}:tiny_mlp", quantize="static", max_batch_size=8, gates=QualityGates(min_top1_agreement=0.95))
    report = build_model(tmp_path, "static", config).report()
    assert report["quantize"] == {"mode": "static", "method": "pt2e-x86-inductor-static-aoti", "quantized_layers": 2}
    assert report["figures"]["int8"]["top1_agreement"] >= 0.95


def test_quantize_none_serves_fp32_on_the_cpu_pool(tmp_path):
    result = build_model(tmp_path, "plain", source(factory=f"{FACTORIES}:tiny_regressor", task="regressor", quantize="none"))
    report = result.report()
    assert report["cpu_pool"] == {"serves": "fp32", "backend": "cpu-fp32", "why": "quantize: none"}
    assert report["speed"] is None and "int8" not in report["figures"]
    assert read_mar(result.mar_path("int8"), "variant.json")["task"] == "regressor"


def test_a_regressor_is_gated_by_error_and_cosine(tmp_path):
    config = source(factory=f"{FACTORIES}:tiny_regressor", task="regressor", quantize="dynamic")
    report = build_model(tmp_path, "regressor", config).report()
    assert report["gates"] == {"min_cosine": 0.99} and report["figures"]["int8"]["cosine"] >= 0.99
    strict = config.model_copy(update={"gates": QualityGates(max_abs_error=0.0)})
    with pytest.raises(AgreementError, match=r"regressor: int8 max_abs_error 0\.\d+ is above the maximum 0\.0"):
        build_model(tmp_path, "regressor", strict, force=True)


def test_a_static_cnn_from_an_example_alone_is_calibrated_on_synthetic_data(tmp_path):
    # Random weights: logit margins too small for top-1 agreement to mean much; gate the cosine.
    result = build_model(tmp_path, "cnn", source(factory=f"{FACTORIES}:tiny_cnn", gates=QualityGates(min_cosine=0.95)))
    report = result.report()
    assert report["quantize"]["mode"] == "static" and report["quantize"]["quantized_layers"] >= 3
    assert report["data"].startswith("random inputs shaped like the example")


def test_an_exported_program_builds_and_a_fixed_batch_one_is_refused(tmp_path):
    module, rows = byo_factories.tiny_mlp().module, torch.randn(2, 16)
    path, fixed = tmp_path / "mlp.pt2", tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(module, (rows,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    result = build_model(tmp_path / "out", "program", source(program=str(path), data=f"{FACTORIES}:tiny_data"))
    report = result.report()
    assert report["passed"] and report["data"].startswith("rows of the rule")
    # PT2E quantizes the program itself: its two Linear layers become int8.
    assert report["quantize"] == {"mode": "dynamic", "method": "pt2e-x86-inductor-dynamic-aoti", "quantized_layers": 2}
    assert report["figures"]["int8"]["top1_agreement"] >= 0.95

    torch.export.save(torch.export.export(module, (rows,)), str(fixed))
    with pytest.raises(BuildInputError, match="model 'fixed': load program: .* exported for batches of exactly 2"):
        build_model(tmp_path / "out", "fixed", source(program=str(fixed)))


def test_a_torchvision_classifier_with_its_weights_builds_on_the_bundled_photos(tmp_path):
    import torchvision

    torch.manual_seed(1)
    weights = tmp_path / "squeeze.pt"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), weights)
    config = BuildConfig(torchvision="squeezenet1_1", weights=str(weights), kind="image", gates=QualityGates(min_cosine=0.9), pool_batch_size=2)
    result = build_model(tmp_path, "squeeze", config)
    report = result.report()
    assert report["kind"] == "image" and report["quantize"]["mode"] == "static"
    assert f"squeezenet1_1 ({weights})" in report["data"] and report["figures"]["int8"]["cosine"] >= 0.9
    assert len(read_mar(result.mar_path("gpu"), "index_to_name.json")) == 1000


def test_a_failing_gate_names_model_and_figure_and_keeps_the_previous_build(mlp):
    out, config, result = mlp
    manifest_before = (out / "models" / "tabular" / "build.json").read_text()
    impossible = config.model_copy(update={"gates": QualityGates(min_top1_agreement=0.95, min_accuracy=0.999)})
    with pytest.raises(AgreementError, match=r"tabular: fp32 top1_accuracy 0\.\d+ is below the minimum 0\.999"):
        build_model(out, "tabular", impossible)
    assert (out / "models" / "tabular" / "build.json").read_text() == manifest_before
    assert result.mar_path("int8").is_file()


@pytest.mark.parametrize(
    "fields, step, detail",
    [
        ({"factory": "tests.unit.no_such_module:make"}, "import factory", "cannot import 'tests.unit.no_such_module'"),
        ({"factory": f"{FACTORIES}:no_such_function"}, "import factory", "has no function 'no_such_function'"),
        ({"factory": f"{FACTORIES}:failing_factory"}, "call factory", "RuntimeError: the weights server is down"),
        ({"factory": f"{FACTORIES}:untraceable"}, "export", "torch.export cannot trace the module"),
        ({"factory": f"{FACTORIES}:tiny_mlp", "data": f"{FACTORIES}:wrong_shape_data"}, "check data",
         r"calibration batch 0 is \(8, 15\) torch.float32; the model takes \(N, 16\)"),
        ({"program": "no/such/model.pt2"}, "load program", "is not a file"),
        ({"torchvision": "squeezenet1_1", "weights": __file__}, "load weights", "test_model_byo.py: UnpicklingError"),
        ({"torchvision": "no_such_net"}, "load torchvision", "'no_such_net'"),
    ],
)  # fmt: skip
def test_bad_inputs_fail_fast_naming_model_and_step_and_keep_the_previous_build(mlp, fields, step, detail):
    out, _, result = mlp
    manifest_before = (out / "models" / "tabular" / "build.json").read_text()
    with pytest.raises(BuildInputError, match=rf"model 'tabular': {step}: .*{detail}"):
        build_model(out, "tabular", source(**fields))
    assert (out / "models" / "tabular" / "build.json").read_text() == manifest_before
    assert all(path.is_file() for path in (out / "model-store" / mar for mar in result.manifest["mars"]))
    assert not list((out / "models").glob(".staging*"))


def test_the_bundled_digits_model_is_built_from_the_example_factory():
    """The stack's build (make test's integration suite) trains it; here only what it is told."""
    from gateway.cli import default_config
    from gateway.config import load_config
    from model.sources import function_source_file

    build = load_config(default_config()).models["digits"].build
    assert (build.factory, build.quantize, build.kind) == ("model.example_factories:digits_mlp", "dynamic", "tensor")
    assert build.quality_gates == QualityGates(min_top1_agreement=0.97, min_accuracy=0.9)
    assert build.inputs[0].name == "features" and build.outputs[0].name == "probabilities"
    assert function_source_file("digits", "import factory", build.factory).name == "example_factories.py"


def parse_model(model: dict):
    from gateway.config import parse_config

    return parse_config({
        "models": {"m": model}, "pools": {"cpu": {"url": "http://127.0.0.1:8090"}},
        "tiers": {"standard": {"pools": ["cpu"]}}, "default_tier": "standard",
    }).models["m"]  # fmt: skip


def test_a_build_mapping_takes_its_kind_and_tensors_from_the_profile():
    tensors = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
               "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}  # fmt: skip
    build = parse_model({"profile": "tensor", **tensors, "build": {"factory": "pkg.mod:fn"}}).build
    assert (build.kind, build.inputs[0].name, build.outputs[0].name) == ("tensor", "x", "y")
    assert build.model_dump().keys().isdisjoint({"kind", "inputs", "outputs"})  # derived again on parsing a dump
    assert build.quality_gates.min_top1_agreement == 0.97
    assert parse_model({"profile": "json", "build": {"program": "m.pt2", "task": "regressor"}}).build.quality_gates.min_cosine == 0.99
    assert parse_model({"profile": "image-classifier", "build": {"torchvision": "resnet50"}}).build.kind == "image"
    assert parse_model({"profile": "image-classifier", "build": "resnet18"}).build == "resnet18"


@pytest.mark.parametrize(
    "model, error",
    [
        ({"profile": "image-classifier", "build": {"factory": "a:b", "torchvision": "resnet18"}}, "exactly one of factory, program, torchvision"),
        ({"profile": "image-classifier", "build": {"quantize": "static"}}, "exactly one of factory, program, torchvision; got none"),
        ({"profile": "image-classifier", "build": {"factory": "no colon"}}, "should match pattern"),
        ({"profile": "image-classifier", "build": {"factory": "a:b", "weights": "w.pt"}}, "weights go with a torchvision classifier"),
        ({"profile": "image-classifier", "build": {"torchvision": "resnet18", "quantize": "int4"}}, "'static', 'dynamic' or 'none'"),
        ({"profile": "passthrough", "build": {"factory": "a:b"}}, "brings its own MAR"),
    ],
)  # fmt: skip
def test_a_bad_build_mapping_is_refused_with_the_reason(model, error):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=error):
        parse_model(model)


def test_a_text_model_ships_its_vocabulary_and_takes_any_length(tmp_path):
    config = BuildConfig(factory=f"{FACTORIES}:tiny_text", kind="text", quantize="dynamic", gates=QualityGates(min_cosine=0.9))
    result = build_model(tmp_path, "words", config)
    assert read_mar(result.mar_path("int8"), "vocab.json")["tokens"][:2] == ["<pad>", "<unk>"]
    assert read_mar(result.mar_path("int8"), "variant.json")["kind"] == "text"
    from torchserve_backend.tiergate_backends import load_model

    with zipfile.ZipFile(result.mar_path("fp32")) as archive:
        archive.extractall(tmp_path / "fp32")
    fp32 = load_model(tmp_path / "fp32", read_mar(result.mar_path("fp32"), "variant.json"))
    assert fp32.logits(torch.randint(1, 7, (3, 40))).shape == (3, 2)  # longer than any text it was exported with


def test_tiergate_build_model_builds_one_model_or_says_why_not(tmp_path, capsys):
    from gateway.cli import main

    assert main(["build-model", "--out", str(tmp_path), "--name", "plain", "--factory", f"{FACTORIES}:tiny_regressor",
                 "--task", "regressor", "--quantize", "none"]) == 0  # fmt: skip
    assert "plain: the CPU pool serves fp32 (cpu-fp32): quantize: none" in capsys.readouterr().out
    assert main(["build-model", "--out", str(tmp_path), "--name", "bad", "--factory", f"{FACTORIES}:failing_factory"]) == 1
    assert "build failed: model 'bad': call factory: RuntimeError: the weights server is down" in capsys.readouterr().err
