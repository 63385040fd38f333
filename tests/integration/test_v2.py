"""The Open Inference Protocol end to end, spoken by the official Triton client
(tritonclient[http]): client → Ray Serve gateway → real TorchServe pools."""

from __future__ import annotations

import base64
import re

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from torchserve_backend import handler

from .images import cat_jpeg, solid_png

MODEL = "resnet18"


@pytest.fixture
def client(stack):
    client = triton.InferenceServerClient(stack.url.removeprefix("http://"), network_timeout=60.0)
    yield client
    client.close()


def images(*files: bytes, binary: bool = True) -> triton.InferInput:
    """Raw files as binary tensor data; in JSON, BYTES are UTF-8 strings, so the files go base64."""
    elements = files if binary else [base64.b64encode(file) for file in files]
    tensor = triton.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def pixels(array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def images_as_fp32() -> triton.InferInput:
    tensor = triton.InferInput("images", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    return tensor


def preprocessed(file: bytes) -> np.ndarray:
    """What a client does before sending pixels: the pools' own preprocessing."""
    image = handler.decode_image(file, handler.DEFAULT_MAX_IMAGE_PIXELS)
    return handler.preprocess_image(image).numpy()[np.newaxis]


def top5(result: triton.InferResult) -> list[dict[str, float]]:
    labels, probabilities = result.as_numpy("top5_labels"), result.as_numpy("top5_probabilities")
    assert labels.shape == probabilities.shape and labels.shape[1] == 5
    return [
        {label.decode(): float(p) for label, p in zip(row_labels, row_probabilities)}
        for row_labels, row_probabilities in zip(labels, probabilities)
    ]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "tiergate"
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1.0")
    assert not client.is_model_ready("nosuchmodel")
    metadata = client.get_model_metadata(MODEL)
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata["inputs"]} == {
        ("images", "BYTES", (-1,)), ("pixels", "FP32", (-1, 3, 224, 224)),
    }
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata["outputs"]} == {
        ("top5_probabilities", "FP32", (-1, 5)), ("top5_labels", "BYTES", (-1, 5)),
    }
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nosuchmodel")
    assert unknown.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_images_batch_answers_like_the_torchserve_api(stack, client, binary):
    red = solid_png((200, 30, 30))
    result = client.infer(MODEL, [images(cat_jpeg(), red, binary=binary)], request_id=f"v2-{binary}")
    cat, square = top5(result)
    with stack.client() as http:
        torchserve_cat = http.post(f"/predictions/{MODEL}", content=cat_jpeg()).json()
    assert result.get_response()["id"] == f"v2-{binary}"
    assert result.get_response()["model_version"] == "1.0"
    assert list(cat) == list(torchserve_cat)
    assert list(cat.values()) == pytest.approx(list(torchserve_cat.values()), abs=1e-4)
    assert list(cat) != list(square)
    assert all(0 <= p <= 1 for p in cat.values()) and list(cat.values()) == sorted(cat.values(), reverse=True)


def test_pixels_answer_like_the_image_they_were_made_from(client):
    from_pixels = top5(client.infer(MODEL, [pixels(preprocessed(cat_jpeg()))]))
    from_file = top5(client.infer(MODEL, [images(cat_jpeg())]))
    assert list(from_pixels[0]) == list(from_file[0])
    assert list(from_pixels[0].values()) == pytest.approx(list(from_file[0].values()), abs=1e-3)


@pytest.mark.parametrize(
    "tensor, words",
    [
        (lambda: pixels(np.zeros((1, 3, 112, 112), np.float32)), "[N,3,224,224]"),
        (lambda: pixels(np.zeros((1, 3, 224, 224), np.float16), "FP16"), "must be FP32"),
        (images_as_fp32, "must be BYTES"),
        (lambda: images(cat_jpeg()[:2000]), "truncated"),  # only the pool's decoder can tell
    ],
    ids=["pixels 112x112", "pixels FP16", "images as FP32", "truncated JPEG"],
)
def test_malformed_tensor_is_a_400_and_the_pools_keep_serving(client, tensor, words):
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [tensor()], headers={"X-SLA-Tier": "premium"})
    assert refused.value.status() == "400"
    assert words in refused.value.message()
    for tier in ("premium", "standard"):
        assert len(top5(client.infer(MODEL, [images(cat_jpeg())], headers={"X-SLA-Tier": tier}))) == 1


def served(metrics: str, tier: str, pool: str) -> float:
    pattern = rf'^tiergate_requests_total\{{[^}}]*code="200"[^}}]*pool="{pool}"[^}}]*tier="{tier}"[^}}]*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


def test_tier_header_routes_v2_calls_and_they_are_counted(stack, client):
    with stack.client() as http:
        before = http.get("/metrics").text
        for _ in range(2):
            client.infer(MODEL, [images(solid_png((10, 200, 10)))], headers={"X-SLA-Tier": "premium"})
        client.infer(MODEL, [images(solid_png((10, 10, 200)))], headers={"X-SLA-Tier": "batch"})
        after = http.get("/metrics").text
        # tritonclient hides response headers; a plain JSON request shows them
        body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(cat_jpeg()).decode()]}]}
        direct = http.post(f"/v2/models/{MODEL}/infer", content=orjson.dumps(body), headers={"X-SLA-Tier": "premium"})
    assert served(after, "premium", "gpu") - served(before, "premium", "gpu") == 2
    assert served(after, "batch", "cpu") - served(before, "batch", "cpu") == 1
    assert direct.status_code == 200, direct.text
    assert (direct.headers["x-tiergate-tier"], direct.headers["x-tiergate-pool"]) == ("premium", "gpu")
    assert direct.headers["x-tiergate-backend"] == "cpu-fp32"  # the GPU pool's MAR on a host without CUDA
    assert [output["shape"] for output in direct.json()["outputs"]] == [[1, 5], [1, 5]]
