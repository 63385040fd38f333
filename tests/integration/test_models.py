"""Every profile on the real stack: the bundled config serves four models at once — resnet18
(image-classifier), digits (tensor: 64 floats in), sentiment (json: a text classifier) and
stock-classifier (passthrough: a MAR on TorchServe's stock image_classifier handler, on the
CPU pool only) — each through both APIs, with coalescing, a shadow test and per-model metrics
on the non-image models, and bad input refused per profile before any pool is called.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_digits

from .images import cat_jpeg
from .waiting import wait_for

TEXTS = {"positive": "what a wonderful and delightful film, i loved it", "negative": "a dull, boring and awful mess"}


def digits_rows(count: int) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.data[-count:].astype(np.float32), digits.target[-count:]


def v2_features(rows: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}


@pytest.fixture(scope="module")
def triton_client(stack):
    client = triton.InferenceServerClient(stack.url.removeprefix("http://"), network_timeout=60.0)
    yield client
    client.close()


def test_every_model_is_ready_per_model_on_both_apis(stack, triton_client):
    with stack.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["models"] == dict.fromkeys(("resnet18", "digits", "sentiment", "stock-classifier"), "ready")
    for model in ("resnet18", "digits", "sentiment", "stock-classifier"):
        assert triton_client.is_model_ready(model)
    metadata = triton_client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_digits_through_open_inference_classify_real_digits(stack, triton_client, binary):
    rows, labels = digits_rows(8)
    features = triton.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows, binary_data=binary)
    result = triton_client.infer(
        "digits", [features], headers={"X-SLA-Tier": "premium"},
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)],
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (8, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.75  # trained here: ≥ 0.9 held out (build report)
    assert result.get_response()["model_name"] == "digits"


def test_digits_through_the_torchserve_api_take_the_same_json(stack):
    rows, _ = digits_rows(3)
    with stack.client() as client:
        answer = client.post("/predictions/digits", content=orjson.dumps(v2_features(rows)),
                             headers={"content-type": "application/json", "X-SLA-Tier": "standard"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-tiergate-pool"] == "cpu"
    [output] = answer.json()["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [3, 10]


def test_sentiment_through_both_apis(stack, triton_client):
    with stack.client() as client:
        for label, text in TEXTS.items():
            answer = client.post("/predictions/sentiment", json={"text": text})
            assert answer.status_code == 200, answer.text
            assert answer.json()["label"] == label
            assert len(answer.headers.get_list("x-request-id")) == 1  # Ray Serve's ingress sets it, nobody else
            assert set(answer.json()["probabilities"]) == {"negative", "positive"}
    body = triton.InferInput("body", [1], "BYTES")
    body.set_data_from_numpy(np.array([orjson.dumps({"text": TEXTS["positive"]})], dtype=object))
    result = triton_client.infer("sentiment", [body], headers={"X-SLA-Tier": "premium"})
    assert orjson.loads(result.as_numpy("body")[0])["label"] == "positive"


def test_a_mar_with_a_stock_handler_is_served_as_passthrough_on_the_pool_that_has_it(stack, triton_client):
    with stack.client() as client:
        # premium prefers the gpu pool, which does not serve this model: the cpu pool answers.
        answer = client.post("/predictions/stock-classifier", content=cat_jpeg(),
                             headers={"content-type": "image/jpeg", "X-SLA-Tier": "premium"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-tiergate-pool"] == "cpu"
        scores = answer.json()
        assert scores and all(isinstance(value, float) for value in scores.values())
    image = triton.InferInput("body", [1], "BYTES")
    image.set_data_from_numpy(np.array([cat_jpeg()], dtype=object), binary_data=True)
    result = triton_client.infer("stock-classifier", [image])
    assert orjson.loads(result.as_numpy("body")[0]) == scores


@pytest.mark.parametrize(
    "path, body, headers, status, words",
    [
        ("/predictions/digits", orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 63],
                                                          "data": [0.0] * 63}]}), {}, 400, "must have shape [N,64]"),
        ("/predictions/digits", orjson.dumps({"inputs": [{"name": "features", "datatype": "INT64", "shape": [1, 64],
                                                          "data": [0] * 64}]}), {}, 400, "must be FP32"),
        ("/predictions/digits", orjson.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                                          "data": [0.0] * 64}]}), {}, 400, "takes the inputs ['features']"),
        ("/predictions/digits", b"{}", {"content-type": "text/plain"}, 415, "Open Inference request as JSON"),
        ("/predictions/sentiment", orjson.dumps({"text": 7}), {}, 400, "at $.text: fails 'type'"),
        ("/predictions/sentiment", orjson.dumps({"text": "hi", "extra": 1}), {}, 400, "fails 'additionalProperties'"),
        ("/predictions/sentiment", b"{not json", {}, 400, "not valid JSON"),
        ("/predictions/sentiment", b"x" * 70_000, {}, 413, "65536-byte limit"),
        ("/predictions/stock-classifier", b"GIF89a", {"content-type": "image/gif"}, 415, "this model takes"),
        ("/predictions/stock-classifier", b"", {"content-type": "image/jpeg"}, 400, "empty body"),
    ],
)
def test_bad_input_is_refused_per_profile_before_any_pool(stack, path, body, headers, status, words):
    headers = {"content-type": "application/json", **headers}
    before = stack.metric("tiergate_backend_calls_total")
    with stack.client() as client:
        answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["message"]
    assert stack.metric("tiergate_backend_calls_total") == before


def test_identical_documents_coalesce_whatever_their_spacing(stack):
    text = "a one-off sentence for the coalescing test, never sent before"
    spellings = [orjson.dumps({"text": text}), b'{ "text" : "%s" }' % text.encode(), b'{"text":"%s"}\n' % text.encode()]
    bodies = [spellings[index % 3] for index in range(9)]
    start = threading.Barrier(len(bodies))

    def send(body: bytes):
        with stack.client() as client:
            client.get("/healthz")
            start.wait()
            return client.post("/predictions/sentiment", content=body,
                               headers={"content-type": "application/json", "X-SLA-Tier": "batch"})

    before = stack.pool_metric("cpu", "ts_inference_requests_total")
    coalesced_before = stack.metric("tiergate_coalesced_total", model="sentiment")
    # The int8 model answers within milliseconds, and a copy this 2-core machine sends late
    # would start a flight of its own: the pool is held until every copy has had time to join.
    cpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "cpu")
    os.killpg(cpu["pid"], signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            sent = [pool.submit(send, body) for body in bodies]
            time.sleep(1)
            os.killpg(cpu["pid"], signal.SIGCONT)
            answers = [answer.result() for answer in sent]
    finally:
        os.killpg(cpu["pid"], signal.SIGCONT)
    assert [answer.status_code for answer in answers] == [200] * len(bodies)
    assert len({answer.content for answer in answers}) == 1
    assert stack.pool_metric("cpu", "ts_inference_requests_total") - before == 1
    assert stack.metric("tiergate_coalesced_total", model="sentiment") - coalesced_before == len(bodies) - 1


def test_per_model_metrics_and_a_shadow_test_on_the_tensor_model(stack):
    """Standard traffic (the int8 CPU pool) mirrored to the GPU pool's build of the same model:
    probabilities compared elementwise and by cosine, under the shadow metrics' usual names."""
    config = copy.deepcopy(stack.config)
    config["shadow_log"] = str(stack.state_dir / "shadow-digits.sqlite")
    config["shadows"] = [{
        "name": "digits-int8-vs-fp32", "model": "digits", "tiers": ["standard"], "sample_rate": 1.0,
        "target_pool": "gpu", "timeout_ms": 30_000, "compare": {"atol": 0.05, "rtol": 0.0, "min_cosine": 0.95},
    }]
    stack.apply(config)
    try:
        served_before = stack.metric("tiergate_requests_total", model="digits", code="200")
        rows, _ = digits_rows(12)
        with stack.client() as client:
            for row in rows:
                answer = client.post("/predictions/digits", content=orjson.dumps(v2_features(row[None])),
                                     headers={"content-type": "application/json"})
                assert answer.status_code == 200, answer.text
        assert stack.metric("tiergate_requests_total", model="digits", code="200") - served_before == len(rows)
        outcomes = lambda: stack.metric("tiergate_shadow_outcomes_total", shadow="digits-int8-vs-fp32")  # noqa: E731
        wait_for(lambda: outcomes() == len(rows), 60)
        # int8 against fp32 on real digits: the same class nearly always, probabilities close.
        agree = stack.metric("tiergate_shadow_outcomes_total", shadow="digits-int8-vs-fp32", outcome="agree")
        assert agree >= len(rows) - 2
        assert stack.metric("tiergate_shadow_top1_total", shadow="digits-int8-vs-fp32", pair="candidate", result="same") >= len(rows) - 2
    finally:
        stack.apply(stack.config)
