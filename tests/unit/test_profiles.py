"""Each profile through the real HttpFront with faked pools: what it admits, how it forwards,
what it refuses (never calling a pool), how it describes itself and compares answers."""

from __future__ import annotations

import asyncio
import base64
import logging

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.auth import digest
from gateway.config import ShadowCompare, parse_config
from gateway.profiles import profile_for
from gateway.profiles.base import RowCountMismatch

from .fakes import config_data, gateway, jpeg

MODELS = {
    "resnet18": {"profile": "image-classifier"},
    "digits": {
        "profile": "tensor",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}, {"name": "mask", "datatype": "BOOL", "shape": [-1, 4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
        "max_batch": 8,
    },
    "sentiment": {
        "profile": "json",
        "json_schema": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 20}}, "required": ["text"]},
        "max_body_bytes": 200,
    },
    "opaque": {"profile": "passthrough", "content_types": ["application/x-thing"]},
}


class Recorder:
    """A pool answering per model like its handler would, recording what it was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ping":
            return httpx.Response(200)
        self.requests.append(request)
        model = request.url.path.split("/")[2]
        headers = {"X-Tiergate-Backend": "cpu-fp32"}
        if model == "digits":
            rows = orjson.loads(request.content)["inputs"][0]["shape"][0]
            outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [rows, 3], "data": [0.2, 0.3, 0.5] * rows}]
            return httpx.Response(200, json={"model_name": "digits", "model_version": "1.0", "outputs": outputs}, headers=headers)
        if model == "sentiment":
            return httpx.Response(200, json={"label": "positive", "probabilities": {"positive": 0.9}}, headers=headers)
        return httpx.Response(200, content=b"opaque answer", headers={"content-type": "application/x-answer"})


def every_model(pool):
    return gateway(pool, models=MODELS, max_body_bytes=4096)


def features(rows: int = 2, cols: int = 4, datatype: str = "FP32", data=None, name: str = "features") -> dict:
    values = data if data is not None else [0.5] * (rows * cols)
    return {"name": name, "datatype": datatype, "shape": [rows, cols], "data": values}


def mask(rows: int = 2) -> dict:
    return {"name": "mask", "datatype": "BOOL", "shape": [rows, 4], "data": [True] * rows * 4}


async def test_tensor_inputs_are_forwarded_in_declared_order_as_flat_json_whatever_the_encoding():
    pool = Recorder()
    nested = {"inputs": [mask(), {**features(), "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}]}
    header = orjson.dumps({"inputs": [
        {"name": "features", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}}, mask(),
    ]})
    binary = np.arange(1, 9, dtype="<f4").tobytes()
    async with every_model(pool) as client:
        as_json = await client.post("/v2/models/digits/infer", content=orjson.dumps(nested))
        as_binary = await client.post("/v2/models/digits/infer", content=header + binary,
                                      headers={"Inference-Header-Content-Length": str(len(header))})
        torchserve = await client.post("/predictions/digits", json=nested)
    assert [r.status_code for r in (as_json, as_binary, torchserve)] == [200] * 3, as_binary.text
    sent = [request.content for request in pool.requests]
    assert sent[0] == sent[1] == sent[2]  # one canonical form: identical tensors coalesce
    forwarded = orjson.loads(sent[0])["inputs"]
    assert [tensor["name"] for tensor in forwarded] == ["features", "mask"]
    assert forwarded[0]["data"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert as_json.json()["outputs"][0]["shape"] == [2, 3] and as_json.json()["model_version"] == "1.0"
    assert torchserve.json()["outputs"][0]["name"] == "probabilities"


@pytest.mark.parametrize(
    "inputs, status, words",
    [
        ([features()], 400, "takes the inputs ['features', 'mask'], not ['features']"),
        ([features(cols=5), mask()], 400, "'features' must have shape [N,4], not [2, 5]"),
        ([features(datatype="INT32", data=[1] * 8), mask()], 400, "'features' must be FP32, not INT32"),
        ([features(rows=2), mask(rows=3)], 400, "the same number of rows"),
        ([features(rows=9), mask(rows=9)], 413, "at most 8 rows"),
        ([features(data=[1.0] * 7), mask()], 400, "data must be 8 numbers"),
        ([features(data=[1e39] * 8), mask()], 400, "finite"),
        ([features(), {**mask(), "data": [1] * 8}], 400, "8 booleans"),
    ],
)
async def test_tensor_mistakes_are_named_and_never_reach_a_pool(inputs, status, words):
    pool = Recorder()
    async with every_model(pool) as client:
        v2 = await client.post("/v2/models/digits/infer", json={"inputs": inputs})
        torchserve = await client.post("/predictions/digits", json={"inputs": inputs})
    assert (v2.status_code, torchserve.status_code) == (status, status), v2.text
    assert words in v2.json()["error"] and words in torchserve.json()["message"]
    assert pool.requests == []


async def test_json_documents_are_checked_against_the_schema_and_sent_in_canonical_form():
    pool = Recorder()
    async with every_model(pool) as client:
        spaced = await client.post("/predictions/sentiment", content=b'{ "text" :  "fine"  }',
                                   headers={"content-type": "application/json"})
        compact = await client.post("/predictions/sentiment", json={"text": "fine"})
        wrong_type = await client.post("/predictions/sentiment", json={"text": ["not", "a", "string"]})
        too_long = await client.post("/predictions/sentiment", json={"text": "x" * 21})
        missing = await client.post("/predictions/sentiment", json={"words": "secret payload"})
        text_plain = await client.post("/predictions/sentiment", content=b"{}", headers={"content-type": "text/plain"})
        too_big = await client.post("/predictions/sentiment", json={"text": "y" * 300})
        via_v2 = await client.post("/v2/models/sentiment/infer", json={"inputs": [
            {"name": "body", "datatype": "BYTES", "shape": [1], "data": ['{"text":"fine"}']}]})
    assert spaced.status_code == compact.status_code == 200
    assert [request.content for request in pool.requests] == [b'{"text":"fine"}'] * 3
    assert wrong_type.status_code == 400 and "at $.text: fails 'type' ('string')" in wrong_type.json()["message"]
    assert too_long.status_code == 400 and "fails 'maxLength' (20)" in too_long.json()["message"]
    assert missing.status_code == 400 and "fails 'required'" in missing.json()["message"]
    assert "secret payload" not in missing.text  # the schema's words, never the payload
    assert text_plain.status_code == 415 and too_big.status_code == 413
    assert via_v2.status_code == 200, via_v2.text
    [output] = via_v2.json()["outputs"]
    assert output["name"] == "body" and orjson.loads(output["data"][0])["label"] == "positive"


async def test_passthrough_forwards_allowed_bytes_untouched_and_refuses_other_types():
    pool = Recorder()
    async with every_model(pool) as client:
        answer = await client.post("/predictions/opaque", content=b"\x00\x01 anything", headers={"content-type": "application/x-thing"})
        other = await client.post("/predictions/opaque", content=b"x", headers={"content-type": "application/json"})
        empty = await client.post("/predictions/opaque", content=b"", headers={"content-type": "application/x-thing"})
        via_v2 = await client.post("/v2/models/opaque/infer", json={"inputs": [
            {"name": "body", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"\x00\x01 anything").decode()]}]})
    assert answer.status_code == 200 and answer.content == b"opaque answer"
    assert answer.headers["content-type"] == "application/x-answer"
    assert answer.headers["x-tiergate-backend"] == "unknown"  # a handler that does not say
    assert pool.requests[0].content == b"\x00\x01 anything"
    assert pool.requests[0].headers["content-type"] == "application/x-thing"
    assert other.status_code == 415 and "application/x-thing" in other.json()["message"]
    assert empty.status_code == 400
    assert via_v2.status_code == 200 and via_v2.json()["outputs"][0]["data"] == ["opaque answer"]
    assert pool.requests[1].content == b"\x00\x01 anything"


async def test_model_metadata_comes_from_each_profile():
    async with every_model(Recorder()) as client:
        digits = (await client.get("/v2/models/digits")).json()
        sentiment = (await client.get("/v2/models/sentiment")).json()
        resnet = (await client.get("/v2/models/resnet18")).json()
    assert digits["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 4]}, {"name": "mask", "datatype": "BOOL", "shape": [-1, 4]},
    ]
    assert digits["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert sentiment["inputs"] == [{"name": "body", "datatype": "BYTES", "shape": [1]}]
    assert [tensor["name"] for tensor in resnet["inputs"]] == ["images", "pixels"]


async def test_both_apis_admit_callers_before_naming_models():
    keyed = {"auth": {"keys": [{"name": "shop", "sha256": digest("secret"), "tiers": ["standard"]}]}}
    async with gateway(Recorder(), **keyed) as client:
        answers = [
            await client.post("/predictions/nonexistent", content=jpeg()),
            await client.post("/v2/models/nonexistent/infer", json={"inputs": []}),
            await client.get("/v2/models/nonexistent"),
            await client.get("/v2/models/resnet18/ready"),
        ]
    assert [answer.status_code for answer in answers] == [401] * 4
    assert not any("resnet18" in answer.text for answer in answers)


async def test_refusals_before_the_pipeline_are_counted_by_status_and_type():
    def refusals(code: str, kind: str) -> float:
        return REGISTRY.get_sample_value("tiergate_refusals_total", {"code": code, "type": kind}) or 0.0

    before = (refusals("404", "ModelNotFound"), refusals("415", "UnsupportedMediaType"))
    async with every_model(Recorder()) as client:
        await client.post("/predictions/nonexistent", content=jpeg())
        await client.post("/predictions/opaque", content=b"x", headers={"content-type": "text/plain"})
    assert (refusals("404", "ModelNotFound"), refusals("415", "UnsupportedMediaType")) == (before[0] + 1, before[1] + 1)


async def test_a_client_that_goes_away_is_counted_as_499_not_500(caplog):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return httpx.Response(200, json={"tabby": 1.0})

    def served(code: str) -> float:
        labels = {"tier": "standard", "pool": "-", "model": "resnet18", "code": code, "backend": "-"}
        return REGISTRY.get_sample_value("tiergate_requests_total", labels) or 0.0

    before = served("499"), served("500")
    caplog.set_level(logging.INFO, logger="tiergate.access")
    async with gateway(slow) as client:
        calls = [asyncio.create_task(client.post("/predictions/resnet18", content=jpeg())) for _ in range(3)]
        await asyncio.sleep(0.2)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        release.set()
    assert (served("499"), served("500")) == (before[0] + 3, before[1])
    assert sum('"status":499' in record.getMessage() for record in caplog.records) == 3


async def test_request_id_is_set_once_by_the_front_unless_the_ingress_does():
    async with gateway(Recorder()) as client:
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-Request-ID": "abc-1"})
    assert answer.headers.get_list("x-request-id") == ["abc-1"]


def test_tensor_comparison_uses_tolerances_and_cosine():
    profile = profile_for(parse_config(config_data(models=MODELS)).models["digits"])

    def answer(values):
        return orjson.dumps({"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": values}]})

    settings = ShadowCompare(atol=0.01, rtol=0.0, min_cosine=0.99)
    close = profile.compare(answer([0.2, 0.3, 0.5]), answer([0.205, 0.3, 0.495]), settings)
    assert close.top1_same and close.max_delta == pytest.approx(0.005, abs=1e-6) and close.tolerance == 0.01
    far = profile.compare(answer([0.9, 0.05, 0.05]), answer([0.05, 0.05, 0.9]), settings)
    assert not far.top1_same and far.max_delta > 0.8
    with pytest.raises(RowCountMismatch):
        profile.compare(answer([0.2, 0.3, 0.5]), orjson.dumps({"outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "data": [0.1] * 6}]}), settings)
    with pytest.raises(ValueError):
        profile.compare(answer([0.2, 0.3, 0.5]), b'{"outputs": "nope"}', settings)


def test_json_and_passthrough_comparisons():
    config = parse_config(config_data(models=MODELS))
    settings = ShadowCompare(atol=0.01, rtol=0.0)
    document = profile_for(config.models["sentiment"])
    near = document.compare(b'{"label":"positive","p":{"positive":0.9}}', b'{"p":{"positive":0.905},"label":"positive"}', settings)
    assert near.top1_same and near.overlap == 1.0 and near.max_delta <= settings.atol
    flipped = document.compare(b'{"label":"positive","p":0.6}', b'{"label":"negative","p":0.6}', settings)
    assert not flipped.top1_same
    opaque = profile_for(config.models["opaque"])
    assert opaque.compare(b"abc", b"abc", settings).top1_same and not opaque.compare(b"abc", b"abd", settings).top1_same
