"""Local pools: which MAR each model loads, and readiness read from TorchServe's management API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gateway.cli import default_config
from gateway.config import load_config
from torchserve_backend.launcher import (
    BACKEND_UNREPORTED,
    PoolSpec,
    render_properties,
    reported_backend,
    served_versions,
    worker_ready,
)


@pytest.fixture(scope="module")
def config():
    return load_config(default_config())


def spec(config, pool: str) -> PoolSpec:
    return PoolSpec.from_config(config, pool, Path("/store"), Path("/work"))


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_each_pool_loads_exactly_its_models_with_their_mars(config):
    cpu, gpu = spec(config, "cpu"), spec(config, "gpu")
    assert {model: cpu.mar(model) for model in cpu.models} == {
        "resnet18": "resnet18-int8.mar",
        "digits": "digits-int8.mar",
        "sentiment": "sentiment-int8.mar",
        "stock-classifier": "stock-classifier.mar",  # the model config's `mar:`, whatever the variant
    }
    assert {model: gpu.mar(model) for model in gpu.models} == {
        "resnet18": "resnet18-gpu.mar", "digits": "digits-gpu.mar", "sentiment": "sentiment-gpu.mar",
    }  # fmt: skip

    rendered = properties(render_properties(gpu))
    assert rendered["load_models"] == "resnet18=resnet18-gpu.mar,digits=digits-gpu.mar,sentiment=sentiment-gpu.mar"
    models = json.loads(rendered["models"])
    assert list(models) == ["resnet18", "digits", "sentiment"]
    assert models["digits"]["1.0"]["marName"] == "digits-gpu.mar"
    assert rendered["management_address"] == "http://127.0.0.1:8081"


def test_a_model_config_mar_applies_to_every_pool(config):
    data = config.model_dump(mode="json", exclude_none=True)
    data["pools"]["gpu"]["models"].append("stock-classifier")
    both = type(config).model_validate(data)
    assert spec(both, "gpu").mar("stock-classifier") == spec(both, "cpu").mar("stock-classifier") == "stock-classifier.mar"


def test_a_models_declared_version_is_the_one_its_pools_configure(config):
    data = config.model_dump(mode="json", exclude_none=True)
    data["models"]["stock-classifier"]["version"] = "2.1"
    rendered = json.loads(properties(render_properties(spec(type(config).model_validate(data), "cpu")))["models"])
    assert list(rendered["stock-classifier"]) == ["2.1"] and list(rendered["resnet18"]) == ["1.0"]
    describe = httpx.Response(200, json=[{"modelName": "m", "modelVersion": "2.1", "workers": []}])
    assert served_versions(describe) == ["2.1"]


def test_a_pool_without_local_launch_settings_is_refused(config):
    data = config.model_dump(mode="json", exclude_none=True)
    del data["pools"]["gpu"]["local"]
    with pytest.raises(ValueError, match="pool 'gpu' has no `local:`"):
        spec(type(config).model_validate(data), "gpu")


def describe(status: int = 200, **version) -> httpx.Response:
    return httpx.Response(status, json=[{"modelName": "digits", "modelVersion": "1.0", **version}])


@pytest.mark.parametrize(
    "answer, ready",
    [
        (describe(workers=[{"id": "9000", "status": "READY"}]), True),
        (describe(workers=[{"id": "9000", "status": "UNLOADING"}, {"id": "9001", "status": "READY"}]), True),
        (describe(workers=[{"id": "9000", "status": "UNLOADING"}]), False),
        (describe(workers=[]), False),
        (httpx.Response(404, json={"code": 404, "type": "ModelNotFoundException"}), False),
    ],
)
def test_a_model_is_ready_when_one_worker_is(answer, ready):
    assert worker_ready(answer) is ready


@pytest.mark.parametrize(
    "answer, backend",
    [
        (describe(customizedMetadata={"backend": "cpu-int8", "kind": "tensor"}), "cpu-int8"),
        (describe(customizedMetadata='{"backend": "inductor-cuda"}'), "inductor-cuda"),
        (describe(), BACKEND_UNREPORTED),  # a stock handler says nothing
        (describe(customizedMetadata="not json"), BACKEND_UNREPORTED),
        (describe(customizedMetadata={"backend": ""}), BACKEND_UNREPORTED),
        (httpx.Response(500, json={"code": 500}), BACKEND_UNREPORTED),
    ],
)
def test_the_backend_comes_from_the_customized_describe(answer, backend):
    assert reported_backend(answer) == backend
