"""The handler's Open Inference Protocol form: JSON tensors in, v2 outputs out, in the
same TorchServe batches as raw images."""

from __future__ import annotations

import base64
import json

import pytest
import torch
from PIL import Image

from tests.unit.test_handler import (
    LABELS,
    PHOTO,
    encode,
    make_context,
    png_declaring,
    run,
    status,
    write_model_dir,
)
from torchserve_backend import handler
from torchserve_backend import tiergate_backends as backends


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("fp32-v2"), max_batch_size=4)


@pytest.fixture
def service(model_dir) -> handler.TiergateHandler:
    manifest = {"model": {"modelName": "tiny", "modelVersion": "1.0"}}
    context = make_context(model_dir)
    context.manifest = manifest
    service = handler.TiergateHandler(max_image_pixels=handler.DEFAULT_MAX_IMAGE_PIXELS)
    service.initialize(context, cuda_available=False)
    return service


def photo() -> bytes:
    return PHOTO.read_bytes()


def rotated_png() -> bytes:
    return encode(Image.open(PHOTO).rotate(90, expand=True), "PNG")


def images_request(*files: bytes) -> dict:
    data = [base64.b64encode(file).decode() for file in files]
    return {"body": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(files)], "data": data}]}}


def pixels_request(pixels: torch.Tensor) -> dict:
    tensor = {"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.flatten().tolist()}
    return {"body": {"inputs": [tensor]}}


def pixels_of(file: bytes) -> torch.Tensor:
    return handler.preprocess_image(handler.decode_image(file, handler.DEFAULT_MAX_IMAGE_PIXELS))


def rows(answer: dict) -> list[dict[str, float]]:
    """The v2 answer as one {label: probability} per image, to compare with the raw form."""
    outputs = {output["name"]: output for output in answer["outputs"]}
    probabilities, labels = outputs["top5_probabilities"], outputs["top5_labels"]
    assert probabilities["datatype"] == "FP32" and labels["datatype"] == "BYTES"
    assert probabilities["shape"] == labels["shape"]
    count, k = probabilities["shape"]
    assert len(probabilities["data"]) == len(labels["data"]) == count * k
    return [
        dict(zip(labels["data"][row * k:(row + 1) * k], probabilities["data"][row * k:(row + 1) * k]))
        for row in range(count)
    ]


def assert_same_top5(v2_row: dict, raw: dict) -> None:
    assert list(v2_row) == list(raw)
    assert list(v2_row.values()) == pytest.approx(list(raw.values()), rel=1e-4)


def test_encoded_images_batch_of_n_answers_n_rows_like_raw_requests(service, model_dir):
    [raw_jpeg, raw_png], _ = run(service, model_dir, [{"data": photo()}, {"data": rotated_png()}])
    [answer], context = run(service, model_dir, [images_request(photo(), rotated_png(), photo())])

    assert status(context, 0) == 200
    assert answer["model_name"] == "tiny" and answer["model_version"] == "1.0"
    assert [output["shape"] for output in answer["outputs"]] == [[3, 5], [3, 5]]
    first, second, third = rows(answer)
    assert_same_top5(first, raw_jpeg)
    assert_same_top5(second, raw_png)
    assert first == third
    assert set(first) <= set(LABELS)
    json.dumps(answer)  # TorchServe serialises the dict as the response body
    assert context.get_response_content_type(0) == "application/json"
    assert context.get_response_headers(0)[handler.BACKEND_HEADER] == backends.BACKEND_CPU_FP32


def test_pixels_answer_like_the_image_they_were_made_from(service, model_dir):
    [raw], _ = run(service, model_dir, [{"data": photo()}])
    pixels = torch.stack([pixels_of(photo()), pixels_of(rotated_png())])
    [answer], context = run(service, model_dir, [pixels_request(pixels)])

    assert status(context, 0) == 200
    first, second = rows(answer)
    assert_same_top5(first, raw)
    assert first != second


def test_both_forms_share_one_forward_and_each_gets_its_own_form(service, model_dir):
    forward_batches = []
    module = service.model.module
    service.model.module = lambda x: forward_batches.append(len(x)) or module(x)
    requests = [
        {"data": photo()},
        images_request(photo(), rotated_png()),
        pixels_request(pixels_of(photo()).unsqueeze(0)),
        {"body": photo()},
    ]
    answers, context = run(service, model_dir, requests)

    assert forward_batches == [4, 1]  # 5 images, split at the artifact's max batch size of 4
    assert [status(context, i) for i in range(4)] == [200] * 4
    assert len(answers[0]) == 5
    assert_same_top5(answers[3], answers[0])  # not ==: they ran in different forward chunks
    images, pixels = rows(answers[1]), rows(answers[2])
    assert len(images) == 2 and len(pixels) == 1
    for v2_row in (images[0], pixels[0]):
        assert_same_top5(v2_row, answers[0])


def images_tensor(**changes) -> dict:
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PHOTO.read_bytes()).decode()]}
    return {"body": {"inputs": [{**tensor, **changes}]}}


def pixels_tensor(**changes) -> dict:
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * (3 * 224 * 224)}
    return {"body": {"inputs": [{**tensor, **changes}]}}


MALFORMED = {
    "no inputs": ({"body": {"inputs": []}}, "exactly one input"),
    "two inputs": ({"body": {"inputs": [images_tensor()["body"]["inputs"][0]] * 2}}, "exactly one input"),
    "unknown input": (images_tensor(name="image"), "unknown input"),
    "images as FP32": (images_tensor(datatype="FP32"), "must be BYTES"),
    "images shape [1,1]": (images_tensor(shape=[1, 1]), "must be BYTES of shape [N]"),
    "images data short": (images_tensor(shape=[2]), "N elements"),
    "not base64": (images_tensor(data=["not base64!"]), "images[0] is not a base64 string"),
    "non-ASCII string": (images_tensor(data=["é"]), "images[0] is not a base64 string"),
    "base64 number": (images_tensor(data=[12]), "images[0] is not a base64 string"),
    "base64 of text": (images_tensor(data=[base64.b64encode(b"hello").decode()]), "images[0]: request body is not a JPEG"),
    "decompression bomb": (images_tensor(data=[base64.b64encode(png_declaring(50_000, 50_000)).decode()]), "limit"),
    "pixels as FP16": (pixels_tensor(datatype="FP16"), "must be FP32"),
    "pixels 112x112": (pixels_tensor(shape=[1, 3, 112, 112], data=[0.0] * (3 * 112 * 112)), "must be FP32"),
    "pixels data short": (pixels_tensor(data=[0.0] * 10), "that many numbers"),
    "pixels nested": (pixels_tensor(data=[[0.0] * (224 * 224)] * 3), "must be FP32"),
    "pixels strings": (pixels_tensor(data=["0"] * (3 * 224 * 224)), "numbers"),
    "pixels NaN": (pixels_tensor(data=[float("nan")] * (3 * 224 * 224)), "finite"),
    "no shape": (pixels_tensor(shape=None), "shape"),
    "zero images": (images_tensor(shape=[0], data=[]), "1 to 32 images"),
    "33 images": (images_tensor(shape=[33], data=["x"] * 33), "1 to 32 images"),
    "binary data": (images_tensor(data=None, parameters={"binary_data_size": 10}), "JSON list"),
}


@pytest.mark.parametrize("request_, words", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tensor_is_a_400_while_the_rest_of_the_batch_succeeds(service, model_dir, request_, words):
    answers, context = run(service, model_dir, [images_request(photo()), request_, {"data": photo()}])

    assert [status(context, i) for i in range(3)] == [200, 400, 200]
    assert answers[1]["code"] == 400 and answers[1]["type"] == "InvalidInput"
    assert words in answers[1]["message"]
    assert len(rows(answers[0])) == 1 and len(answers[2]) == 5
