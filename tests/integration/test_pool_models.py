"""Every model of the bundled config, built by its recipe and served by one real CPU pool,
answers the wire format the gateway sends it (POST /predictions/<name> on the pool itself)."""

from __future__ import annotations

import concurrent.futures
import io

import httpx
import pytest
from sklearn.datasets import load_digits

from gateway.config import parse_config
from gateway.stack import build_artifacts
from model.stock_classifier import digit_image
from tests.integration.conftest import stack_config
from tests.integration.images import cat_jpeg
from torchserve_backend.launcher import PoolProcess, PoolSpec

PORT = 18190  # away from the session stack's pools


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    data = stack_config()
    data["pools"]["cpu"]["local"].update(inference_port=PORT, management_port=PORT + 1, metrics_port=PORT + 2)
    config = parse_config(data)
    build_artifacts(config)  # shared with the session stack's artifacts; the build lock takes turns
    store = (config.artifacts_dir / "model-store").resolve()
    process = PoolProcess(PoolSpec.from_config(config, "cpu", store, tmp_path_factory.mktemp("models-pool")))
    process.start()
    try:
        backends = process.wait_ready()
        key = {"Authorization": "Bearer " + process.spec.inference_token_file.read_text()}  # token auth stays on
        with httpx.Client(base_url=f"{process.spec.inference_url}/predictions", headers=key, trust_env=False, timeout=60) as client:
            yield client, backends
    finally:
        process.stop()


def digit_rows(indices: list[int]) -> tuple[dict, list[int]]:
    digits = load_digits()
    rows = digits.data[indices].astype(float)
    tensor = {"name": "features", "datatype": "FP32", "shape": [len(indices), 64], "data": rows.flatten().tolist()}
    return {"inputs": [tensor]}, digits.target[indices].tolist()


def test_the_pool_reports_what_its_own_models_run(pool):
    _, backends = pool
    assert backends == "cpu-int8"  # the stock MAR's handler reports nothing


def test_resnet18_answers_a_jpeg_with_a_top5(pool):
    client, _ = pool
    reply = client.post("/resnet18", content=cat_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 200 and len(reply.json()) == 5
    assert reply.headers["X-Tiergate-Backend"] == "cpu-int8"


def test_digits_answers_v2_tensors_row_for_row_across_concurrent_requests(pool):
    client, _ = pool
    requests = [digit_rows(list(range(start, start + rows))) for start, rows in ((0, 1), (10, 3), (20, 5), (40, 8))]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as executor:
        replies = list(executor.map(lambda request: client.post("/digits", json=request[0]), requests))

    correct = total = 0
    for reply, (_, labels) in zip(replies, requests):
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/json")
        assert reply.headers["X-Tiergate-Backend"] == "cpu-int8"
        assert int(reply.headers["X-Tiergate-Batch-Size"]) >= len(labels)
        answer = reply.json()
        assert (answer["model_name"], answer["model_version"]) == ("digits", "1.0")
        [output] = answer["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [len(labels), 10])
        rows = [output["data"][row * 10 : row * 10 + 10] for row in range(len(labels))]
        assert all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in rows)
        correct += sum(max(range(10), key=row.__getitem__) == label for row, label in zip(rows, labels))
        total += len(labels)
    assert correct / total >= 0.9


def test_digits_refuses_a_wrong_shape_with_400(pool):
    client, _ = pool
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 63], "data": [0.0] * 63}]}
    reply = client.post("/digits", json=body)
    assert reply.status_code == 400 and reply.json()["type"] == "InvalidInput"


@pytest.mark.parametrize(
    "text, label",
    [("the movie was wonderful", "positive"), ("the film was not good at all", "negative"),
     ("I did not enjoy this meal", "negative"), ("what a terrible hotel", "negative")],
)  # fmt: skip
def test_sentiment_answers_label_and_probabilities(pool, text, label):
    client, _ = pool
    reply = client.post("/sentiment", json={"text": text})
    assert reply.status_code == 200 and reply.headers["X-Tiergate-Backend"] == "cpu-int8"
    answer = reply.json()
    assert answer["label"] == label and set(answer["probabilities"]) == {"negative", "positive"}


def test_sentiment_refuses_a_body_without_text_with_400(pool):
    client, _ = pool
    reply = client.post("/sentiment", json={"words": "good"})
    assert reply.status_code == 400 and reply.json() == {
        "code": 400, "type": "InvalidInput", "message": 'send application/json {"text": "..."} with a non-empty string',
    }  # fmt: skip


def test_the_stock_handler_classifies_a_drawn_digit(pool):
    client, _ = pool
    digits = load_digits()
    buffer = io.BytesIO()
    digit_image(digits.data[1700]).save(buffer, format="JPEG")
    reply = client.post("/stock-classifier", content=buffer.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 200, reply.text
    top5 = reply.json()
    assert len(top5) == 5 and next(iter(top5)) == str(digits.target[1700])
    assert "X-Tiergate-Backend" not in reply.headers  # not tiergate's handler
