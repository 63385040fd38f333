"""The Open Inference Protocol form through a real TorchServe: an application/json body
reaches the handler parsed, and its 400s stay per request within a batch."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx

from tests.unit.test_handler import PHOTO
from tests.integration.test_handler_torchserve import torchserve  # noqa: F401  (the fixture)


def images_body(*files: bytes, shape: list[int] | None = None) -> dict:
    data = [base64.b64encode(file).decode() for file in files]
    return {"inputs": [{"name": "images", "datatype": "BYTES", "shape": shape or [len(files)], "data": data}]}


def test_json_bodies_are_answered_in_v2_form_beside_raw_images_in_one_batch(torchserve):  # noqa: F811
    url, _ = torchserve
    photo = PHOTO.read_bytes()
    calls = [
        {"json": images_body(photo, photo)},
        {"json": images_body(photo, shape=[1, 1])},
        {"content": photo},
        {"json": {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.5] * 150528}]}},
    ]
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:  # batchSize 4, maxBatchDelay 500 ms
        replies = list(pool.map(lambda call: httpx.post(url, timeout=30, **call), calls))

    assert [reply.status_code for reply in replies] == [200, 400, 200, 200]
    images, malformed, raw, pixels = (reply.json() for reply in replies)
    assert images["model_name"] == "tiny" and images["model_version"] == "1.0"
    outputs = {output["name"]: output for output in images["outputs"]}
    assert outputs["top5_probabilities"]["shape"] == outputs["top5_labels"]["shape"] == [2, 5]
    assert outputs["top5_labels"]["data"][:5] == list(raw)  # int8 model, same photo: same ranking
    assert malformed["type"] == "InvalidInput" and "shape [N]" in malformed["message"]
    assert [output["shape"] for output in pixels["outputs"]] == [[1, 5], [1, 5]]
    assert all(reply.headers["X-Tiergate-Backend"] == "cpu-int8" for reply in replies)
