"""The handler's tensor kind: v2 JSON tensors in, probabilities out, rows of a TorchServe
batch run together and split back per request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.digits_mlp import DigitsMlp
from tests.unit.test_handler import make_context, run, status
from torchserve_backend import handler
from torchserve_backend import tiergate_backends as backends

FEATURES = 64


def write_tensor_model_dir(path: Path, max_batch_size: int = 4) -> Path:
    """An unpacked tensor MAR: an untrained digits MLP as the fp32 program."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=max_batch_size)
    exported = torch.export.export(DigitsMlp(16).eval(), (torch.rand(2, FEATURES) * 16,), dynamic_shapes=({0: batch},))
    torch.export.save(exported, str(path / "mlp.pt2"))
    spec = {
        "arch": "digits", "kind": "tensor", "variant": "fp32", "max_batch_size": max_batch_size,
        "artifacts": {backends.ARTIFACT_FP32: "mlp.pt2"}, "max_request_rows": 8,
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }  # fmt: skip
    (path / backends.VARIANT_FILE).write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tensor_model_dir(tmp_path_factory.mktemp("tensor"))


@pytest.fixture
def service(model_dir) -> handler.TiergateHandler:
    context = make_context(model_dir)
    context.manifest = {"model": {"modelName": "tiny", "modelVersion": "1.0"}}
    service = handler.TiergateHandler()
    service.initialize(context, cuda_available=False)
    return service


def features(rows: int, seed: int) -> list[float]:
    return (torch.rand(rows, FEATURES, generator=torch.Generator().manual_seed(seed)) * 16).flatten().tolist()


def tensor_request(rows: int, seed: int = 0, **overrides) -> dict:
    tensor = {"name": "features", "datatype": "FP32", "shape": [rows, FEATURES], "data": features(rows, seed)}
    return {"body": {"inputs": [{**tensor, **overrides}]}}


def test_rows_of_a_batch_run_together_and_split_back_per_request(service, model_dir):
    singles = [run(service, model_dir, [tensor_request(rows, seed=rows)])[0][0] for rows in (1, 2, 3)]
    forwards = []
    module = service.model.module
    service.model.module = lambda x: forwards.append(len(x)) or module(x)

    answers, context = run(service, model_dir, [tensor_request(rows, seed=rows) for rows in (1, 2, 3)])

    assert forwards == [4, 2]  # 6 rows, the artifact's max_batch_size is 4
    assert [status(context, i) for i in range(3)] == [200] * 3
    assert {context.get_response_headers(i)[backends.BATCH_SIZE_HEADER] for i in range(3)} == {"6"}
    assert {context.get_response_headers(i)[backends.BACKEND_HEADER] for i in range(3)} == {"cpu-fp32"}
    for rows, answer, single in zip((1, 2, 3), answers, singles):
        assert answer["model_name"] == "tiny" and answer["model_version"] == "1.0"
        [output] = answer["outputs"]
        assert output["name"] == "probabilities" and output["datatype"] == "FP32"
        assert output["shape"] == [rows, 10] and len(output["data"]) == rows * 10
        probabilities = torch.tensor(output["data"]).reshape(rows, 10)
        assert torch.allclose(probabilities.sum(dim=1), torch.ones(rows), atol=1e-5)
        assert output["data"] == pytest.approx(single["outputs"][0]["data"], abs=1e-6)
    json.dumps(answers)


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"body": b"\x00" * 256}, "application/json"),
        ({"body": {"text": "hello"}}, "exactly one input"),
        (tensor_request(1, name="pixels"), "one input 'features'"),
        (tensor_request(1, datatype="FP64"), "one input 'features'"),
        (tensor_request(1, shape=[1, 63]), "shape [N,64]"),
        (tensor_request(1, shape=[64]), "shape [N,64]"),
        (tensor_request(9), "1 to 8 rows"),
        (tensor_request(2, data=[0.5] * 64), "flat list of 128 numbers"),
        (tensor_request(1, data=[[0.5] * 64]), "flat list of 64 numbers"),
        (tensor_request(1, data=["1"] * 64), "must be numbers"),
        (tensor_request(1, data=[True] * 64), "must be numbers"),
        (tensor_request(1, data=[float("nan")] * 64), "finite"),
    ],
)
def test_bad_tensors_get_400_while_the_rest_of_the_batch_is_answered(service, model_dir, request_, message):
    answers, context = run(service, model_dir, [tensor_request(2), request_])

    assert [status(context, 0), status(context, 1)] == [200, 400]
    assert answers[1]["code"] == 400 and answers[1]["type"] == "InvalidInput"
    assert message in answers[1]["message"]
    assert answers[0]["outputs"][0]["shape"] == [2, 10]
    assert context.get_response_headers(1)[backends.BATCH_SIZE_HEADER] == "2"


def test_describe_reports_the_backend_and_kind(service):
    assert service.describe() == {"backend": "cpu-fp32", "kind": "tensor", "variant": "fp32"}


def test_a_regressor_answers_its_outputs_as_computed_not_a_softmax(tmp_path):
    model_dir = write_tensor_model_dir(tmp_path / "regressor")
    spec = json.loads((model_dir / backends.VARIANT_FILE).read_text())
    (model_dir / backends.VARIANT_FILE).write_text(json.dumps({**spec, "task": "regressor"}))
    context = make_context(model_dir)
    context.manifest = {"model": {"modelName": "tiny", "modelVersion": "1.0"}}
    service = handler.TiergateHandler()
    service.initialize(context, cuda_available=False)

    [answer], _ = run(service, model_dir, [tensor_request(2, seed=5)])

    rows = torch.tensor(features(2, 5)).reshape(2, FEATURES)
    expected = torch.export.load(str(model_dir / "mlp.pt2")).module()(rows)
    assert answer["outputs"][0]["data"] == pytest.approx(expected.flatten().tolist(), abs=1e-5)
