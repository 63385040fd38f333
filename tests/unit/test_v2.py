"""The Open Inference Protocol surface, with pools faked at the transport and request
bodies built (and answers read) by tritonclient's own encoder."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from PIL import Image

from gateway import metrics
from gateway.auth import digest
from gateway.profiles import image_classifier
from torchserve_backend import handler

from .fakes import by_pool, gateway, jpeg

INFER = "/v2/models/resnet18/infer"
LABELS = ["tabby", "tiger_cat", "Egyptian_cat", "lynx", "crane"]
PROBABILITIES = [0.5, 0.2, 0.1, 0.05, 0.05]
BIG = {"max_body_bytes": 8_000_000}  # room for FP32 [1,3,224,224] as JSON


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def v2_pool(request: httpx.Request) -> httpx.Response:
    """A pool answering like the handler: per image, the same top-5."""
    [tensor] = orjson.loads(request.content)["inputs"]
    count = tensor["shape"][0]
    outputs = [
        {"name": "top5_probabilities", "datatype": "FP32", "shape": [count, 5], "data": PROBABILITIES * count},
        {"name": "top5_labels", "datatype": "BYTES", "shape": [count, 5], "data": LABELS * count},
    ]
    backend = {"gpu.pool": "tensorrt-fp16", "cpu.pool": "cpu-int8"}[request.url.host]
    return httpx.Response(
        200, json={"model_name": "resnet18", "model_version": "1.0", "outputs": outputs},
        headers={"X-Tiergate-Backend": backend},
    )


class Recorder:
    """A fake pool that keeps what it was sent."""

    def __init__(self, answer=v2_pool) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def tensor(self, index: int = -1) -> dict:
        [tensor] = orjson.loads(self.requests[index].content)["inputs"]
        return tensor


def images_input(*files: bytes, binary: bool = True) -> triton.InferInput:
    """Raw files as binary data; in JSON, BYTES are UTF-8 strings, so the files go base64."""
    elements = files if binary else [base64.b64encode(file) for file in files]
    tensor = triton.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def pixels(count: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 224, 224), dtype=np.float32)


def pixels_input(array: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("pixels", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


async def infer(client, inputs, headers=None, **body_options):
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, **body_options)
    headers = dict(headers or {})
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return await client.post(INFER, content=body, headers=headers)


def result(response: httpx.Response) -> triton.InferResult:
    return triton.InferenceServerClient.parse_response_body(
        response.content, header_length=response.headers.get("inference-header-content-length")
    )


async def post_json(client, payload, headers=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return await client.post(INFER, content=orjson.dumps(payload), headers=headers)


def images_json(*files: bytes, **changes) -> dict:
    tensor = {"name": "images", "datatype": "BYTES", "shape": [len(files)], "data": [base64.b64encode(f).decode() for f in files]}
    return {"inputs": [{**tensor, **changes}]}


async def test_health_server_and_model_metadata():
    async with gateway(by_pool) as client:
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        server = await client.get("/v2")
        model = await client.get("/v2/models/resnet18")
        versioned = await client.get("/v2/models/resnet18/versions/1.0")
        model_ready = await client.get("/v2/models/resnet18/versions/1.0/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert server.json()["name"] == "tiergate" and "binary_tensor_data" in server.json()["extensions"]
    assert model.json() == versioned.json() == {
        "name": "resnet18",
        "versions": ["1.0"],
        "platform": "torchserve",
        "inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 224, 224]},
        ],
        "outputs": [
            {"name": "top5_probabilities", "datatype": "FP32", "shape": [-1, 5]},
            {"name": "top5_labels", "datatype": "BYTES", "shape": [-1, 5]},
        ],
    }
    assert (model_ready.status_code, model_ready.json()) == (200, {"name": "resnet18", "ready": True})


async def test_unready_pool_unknown_model_path_and_method_answer_in_v2_error_shape():
    def gpu_down(request):
        if request.url.host == "gpu.pool":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"status": "Healthy"})

    async with gateway(gpu_down) as client:
        answers = {
            "ready": await client.get("/v2/health/ready"),
            "model ready": await client.get("/v2/models/resnet18/ready"),
            "unknown model": await client.get("/v2/models/nosuch"),
            "unknown model infer": await client.post("/v2/models/nosuch/infer", json=images_json(jpeg())),
            "bad version": await client.get("/v2/models/resnet18/versions/..%2F..%2Fping"),
            "unknown path": await client.get("/v2/nothing/here"),
            "triton only": await client.post("/v2/repository/index"),
            "infer by GET": await client.get(INFER),
            "metadata by POST": await client.post("/v2/models/resnet18"),
        }
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "ready": 503, "model ready": 503, "unknown model": 404, "unknown model infer": 404,
        "bad version": 404, "unknown path": 404, "triton only": 400, "infer by GET": 405, "metadata by POST": 405,
    }
    for response in answers.values():
        assert list(response.json()) == ["error"] and response.json()["error"]
    assert "gpu" in answers["ready"].json()["error"] and "cpu" not in answers["ready"].json()["error"]
    assert answers["infer by GET"].headers["allow"] == "POST"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_images_infer_routes_by_tier_and_reaches_the_pool_as_canonical_json(binary):
    pool = Recorder()
    files = (jpeg(), png())
    async with gateway(pool, **BIG) as client:
        premium = await infer(client, [images_input(*files, binary=binary)], {"X-SLA-Tier": "premium"}, request_id="r-7")
        standard = await infer(client, [images_input(*files, binary=binary)])
    assert premium.status_code == 200, premium.text
    assert (premium.headers["x-tiergate-tier"], premium.headers["x-tiergate-pool"]) == ("premium", "gpu")
    assert premium.headers["x-tiergate-backend"] == "tensorrt-fp16"
    assert (standard.headers["x-tiergate-tier"], standard.headers["x-tiergate-pool"]) == ("standard", "cpu")
    answer = result(premium)
    assert answer.get_response()["id"] == "r-7"
    assert answer.get_response()["model_name"] == "resnet18" and answer.get_response()["model_version"] == "1.0"
    assert answer.as_numpy("top5_probabilities").tolist() == [pytest.approx(PROBABILITIES)] * 2
    assert answer.as_numpy("top5_labels").tolist() == [[label.encode() for label in LABELS]] * 2
    # tritonclient asks for binary outputs when it names none
    assert premium.headers["content-type"] == "application/octet-stream"
    request = pool.requests[0]
    assert request.url.path == "/predictions/resnet18"
    assert request.headers["content-type"] == "application/json"
    assert pool.tensor(0) == {
        "name": "images", "datatype": "BYTES", "shape": [2], "data": [base64.b64encode(f).decode() for f in files]
    }
    assert pool.requests[0].content == pool.requests[1].content


async def test_pixels_arrive_as_the_same_float32_however_they_were_sent():
    pool = Recorder()
    array = pixels()
    nested = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": array.tolist()}]}
    async with gateway(pool, coalesce=False, **BIG) as client:
        answers = [
            await infer(client, [pixels_input(array, binary=True)]),
            await infer(client, [pixels_input(array, binary=False)]),
            await post_json(client, nested),
        ]
    assert [answer.status_code for answer in answers] == [200, 200, 200], answers[-1].text
    assert len({request.content for request in pool.requests}) == 1  # one canonical body
    tensor = pool.tensor()
    assert tensor["shape"] == [1, 3, 224, 224] and tensor["datatype"] == "FP32"
    assert np.array_equal(np.asarray(tensor["data"], dtype=np.float32), array.ravel())


async def test_requested_outputs_and_their_encoding():
    async with gateway(v2_pool) as client:
        labels_only = await infer(
            client, [images_input(jpeg())], outputs=[triton.InferRequestedOutput("top5_labels", binary_data=False)]
        )
        mixed = await infer(
            client, [images_input(jpeg())],
            outputs=[
                triton.InferRequestedOutput("top5_probabilities", binary_data=True),
                triton.InferRequestedOutput("top5_labels", binary_data=False),
            ],
        )
        unknown = await infer(client, [images_input(jpeg())], outputs=[triton.InferRequestedOutput("logits")])
    assert labels_only.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in labels_only.headers
    assert labels_only.json()["outputs"] == [
        {"name": "top5_labels", "datatype": "BYTES", "shape": [1, 5], "data": LABELS}
    ]
    assert "id" not in labels_only.json()
    parsed = result(mixed)
    assert parsed.get_output("top5_probabilities")["parameters"] == {"binary_data_size": 20}
    assert parsed.as_numpy("top5_probabilities").tolist() == [pytest.approx(PROBABILITIES)]
    assert parsed.get_output("top5_labels")["data"] == LABELS
    assert unknown.status_code == 400 and "top5_labels" in unknown.json()["error"]


def tensor_json(name="images", datatype="BYTES", shape=(1,), data=None, **extra):
    tensor = {"name": name, "datatype": datatype, "shape": list(shape), **extra}
    if data is not None:
        tensor["data"] = data
    return {"inputs": [tensor]}


JPEG_B64 = base64.b64encode(jpeg()).decode()
ZEROS = [0.0] * (3 * 224 * 224)
MALFORMED = {
    "not JSON": (b"{inputs:", {}, "not valid JSON"),
    "JSON array": (b"[]", {}, "JSON object"),
    "no inputs": (orjson.dumps({"inputs": []}), {}, "exactly one input"),
    "two inputs": (orjson.dumps({"inputs": tensor_json(data=[JPEG_B64])["inputs"] * 2}), {}, "named twice"),
    "unknown input": (orjson.dumps(tensor_json(name="image", data=[JPEG_B64])), {}, "exactly one input: 'images'"),
    "images as FP32": (orjson.dumps(tensor_json(datatype="FP32", data=[JPEG_B64])), {}, "must be 1 numbers"),
    "images shape [1,1]": (orjson.dumps(tensor_json(shape=(1, 1), data=[JPEG_B64])), {}, "shape [N]"),
    "images short": (orjson.dumps(tensor_json(shape=(2,), data=[JPEG_B64])), {}, "must be 2 strings"),
    "no data": (orjson.dumps(tensor_json()), {}, "has no data"),
    "shape not ints": (orjson.dumps(tensor_json(shape=("1",), data=[JPEG_B64])), {}, "non-negative integers"),
    "zero images": (orjson.dumps(tensor_json(shape=(0,), data=[])), {}, "at least one"),
    "raw string": (orjson.dumps(tensor_json(data=["\xff\xd8\xff raw"])), {}, "images[0] is not a base64"),
    "base64 text": (orjson.dumps(tensor_json(data=[base64.b64encode(b"hello").decode()])), {}, "images[0]: body is not a JPEG"),
    "empty image": (orjson.dumps(tensor_json(data=[""])), {}, "images[0]: empty"),
    "pixels FP16": (orjson.dumps(tensor_json("pixels", "FP16", (1, 3, 224, 224), ZEROS)), {}, "must be FP32"),
    "pixels 112x112": (orjson.dumps(tensor_json("pixels", "FP32", (1, 3, 112, 112), [0.0] * 37632)), {}, "[N,3,224,224]"),
    "pixels short": (orjson.dumps(tensor_json("pixels", "FP32", (1, 3, 224, 224), ZEROS[:-1])), {}, "150528 numbers"),
    "pixels strings": (orjson.dumps(tensor_json("pixels", "FP32", (1, 3, 224, 224), ["0"] * 150528)), {}, "numbers"),
    "pixels ragged": (orjson.dumps(tensor_json("pixels", "FP32", (1, 3, 224, 224), [[0.0], [0.0, 0.0]])), {}, "numbers"),
    "pixels nested wrong": (orjson.dumps(tensor_json("pixels", "FP32", (1, 3, 224, 224), np.zeros((1, 3, 112, 448)).tolist())), {}, "nested as the shape"),
    "pixels overflow": (orjson.dumps(tensor_json("pixels", "FP32", (1, 3, 224, 224), [1e39] * 150528)), {}, "finite"),
    "id a number": (orjson.dumps({**tensor_json(data=[JPEG_B64]), "id": 7}), {}, '"id"'),
    "binary_data_output not bool": (orjson.dumps({**tensor_json(data=[JPEG_B64]), "parameters": {"binary_data_output": "yes"}}), {}, "true or false"),
    "classification": (orjson.dumps({**tensor_json(data=[JPEG_B64]), "outputs": [{"name": "top5_labels", "parameters": {"classification": 3}}]}), {}, "classification"),
    "header longer than body": (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "longer than the body"),
    "header length not a number": (b'{"inputs": []}', {"Inference-Header-Content-Length": "1e3"}, "not a number"),
    "binary size wrong": (
        orjson.dumps(tensor_json(parameters={"binary_data_size": 99})) + b"\x03\x00\x00\x00abc",
        {"Inference-Header-Content-Length": str(len(orjson.dumps(tensor_json(parameters={"binary_data_size": 99}))))},
        "binary_data_size",
    ),
    "binary elements short": (
        orjson.dumps(tensor_json(shape=(2,), parameters={"binary_data_size": 7})) + b"\x03\x00\x00\x00\xff\xd8\xff",
        {"Inference-Header-Content-Length": str(len(orjson.dumps(tensor_json(shape=(2,), parameters={"binary_data_size": 7}))))},
        "length-prefixed",
    ),
    "binary and data": (
        orjson.dumps(tensor_json(data=[JPEG_B64], parameters={"binary_data_size": 3})) + b"abc",
        {"Inference-Header-Content-Length": str(len(orjson.dumps(tensor_json(data=[JPEG_B64], parameters={"binary_data_size": 3}))))},
        "both data and binary_data_size",
    ),
    "undeclared binary": (
        orjson.dumps(tensor_json(data=[JPEG_B64])) + b"abc",
        {"Inference-Header-Content-Length": str(len(orjson.dumps(tensor_json(data=[JPEG_B64]))))},
        "no input declares",
    ),
}


@pytest.mark.parametrize("body, headers, words", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_requests_are_400_in_v2_shape_and_never_reach_a_pool(body, headers, words):
    pool = Recorder()
    async with gateway(pool, **BIG) as client:
        response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and words in response.json()["error"]
    assert pool.requests == []


@pytest.mark.parametrize(
    "body, headers, overrides, status, words",
    [
        (orjson.dumps(tensor_json(data=[JPEG_B64] * 33, shape=(33,))), {}, BIG, 413, "at most 32 images"),
        (b"{" + b" " * 2000 + b"}", {}, {}, 413, "1024-byte limit"),
        (None, {}, {"max_body_bytes": 1_000_000}, 413, "as JSON"),  # 602 kB binary FP32 is 1.6 MB as JSON
        (orjson.dumps(tensor_json(data=[JPEG_B64])), {"Content-Type": "text/plain"}, {}, 415, "application/json"),
        (orjson.dumps(tensor_json(data=[JPEG_B64])), {"Content-Type": "application/json", "Content-Encoding": "gzip"}, {}, 415, "compressed"),
        (b"{}", {"Content-Type": "image/jpeg", "Inference-Header-Content-Length": "2"}, {}, 415, "octet-stream"),
    ],
    ids=["33 images", "body over the limit", "pool body over the limit", "text/plain", "gzip", "binary as image/jpeg"],
)
async def test_too_large_and_unsupported_media(body, headers, overrides, status, words):
    pool = Recorder()
    if body is None:
        body, length = triton.InferenceServerClient.generate_request_body([pixels_input(pixels())])
        headers = {"Inference-Header-Content-Length": str(length)}
    async with gateway(pool, **overrides) as client:
        response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert pool.requests == []


@pytest.mark.parametrize(
    "pool_answer, status, words",
    [
        (httpx.Response(503, json={"code": 503, "message": "queue full"}), 503, "at capacity"),
        (httpx.Response(400, json={"code": 400, "type": "InvalidInput", "message": "images[0]: image data is truncated"}), 400, "truncated"),
        (httpx.Response(500, text="worker died"), 502, "failed the request"),
        (httpx.Response(200, json={"tabby": 0.5}), 502, "unexpected form"),
    ],
    ids=["overloaded", "pool 400", "pool 500", "pool answers the TorchServe form"],
)
async def test_pool_errors_pass_through_in_v2_shape(pool_answer, status, words):
    async with gateway(lambda request: pool_answer) as client:
        response = await post_json(client, images_json(jpeg()), headers={"X-SLA-Tier": "standard"})
    assert response.status_code == status
    assert list(response.json()) == ["error"] and words in response.json()["error"]
    assert (response.headers["x-tiergate-pool"], response.headers["x-tiergate-tier"]) == ("cpu", "standard")
    if status == 503:
        assert response.headers["retry-after"] == "1"


async def test_unreachable_pool_is_502_slow_pool_504_unknown_tier_400():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    async def stall(request):
        await asyncio.sleep(request.extensions["timeout"]["read"] + 0.01)
        raise httpx.ReadTimeout("slow", request=request)

    async with gateway(refuse) as client:
        down = await post_json(client, images_json(jpeg()))
        gold = await post_json(client, images_json(jpeg()), headers={"X-SLA-Tier": "gold"})
    tiers = {"standard": {"pools": ["cpu"], "deadline_ms": 150}, "premium": {"pools": ["gpu"]}}
    async with gateway(stall, tiers=tiers) as client:
        slow = await post_json(client, images_json(jpeg()))
    assert down.status_code == 502 and "unavailable" in down.json()["error"]
    assert slow.status_code == 504 and "deadline" in slow.json()["error"]
    assert gold.status_code == 400 and "valid tiers" in gold.json()["error"]


async def test_api_keys_apply_to_v2_infer():
    keys = {"keys": [{"name": "etl", "sha256": digest("etl-key"), "tiers": ["batch"], "default_tier": "batch"}]}
    async with gateway(v2_pool, auth=keys) as client:
        anonymous = await post_json(client, images_json(jpeg()))
        etl = await post_json(client, images_json(jpeg()), headers={"Authorization": "Bearer etl-key"})
        not_allowed = await post_json(
            client, images_json(jpeg()), headers={"Authorization": "Bearer etl-key", "X-SLA-Tier": "premium"}
        )
    assert anonymous.status_code == 401 and list(anonymous.json()) == ["error"]
    assert etl.status_code == 200 and etl.headers["x-tiergate-tier"] == "batch"
    assert not_allowed.status_code == 403 and list(not_allowed.json()) == ["error"]


async def test_identical_tensors_coalesce_whatever_their_encoding():
    calls = []

    async def slow_pool(request):
        calls.append(request)
        await asyncio.sleep(0.2)
        return v2_pool(request)

    array = pixels()
    async with gateway(slow_pool, **BIG) as client:
        binary, as_json = await asyncio.gather(
            infer(client, [pixels_input(array, binary=True)]), infer(client, [pixels_input(array, binary=False)])
        )
    assert (binary.status_code, as_json.status_code) == (200, 200)
    assert len(calls) == 1
    assert {binary.headers.get("x-tiergate-coalesced"), as_json.headers.get("x-tiergate-coalesced")} == {None, "1"}


async def test_v2_calls_are_counted_like_torchserve_calls():
    def count(code):
        return metrics.REQUESTS.labels("batch", "cpu", "resnet18", code, "cpu-int8")._value.get()

    def either_form(request):  # the pool tells the forms apart by content type, like TorchServe
        json_body = request.headers["content-type"] == "application/json"
        return v2_pool(request) if json_body else by_pool(request)

    before = count("200")
    async with gateway(either_form) as client:
        for _ in range(2):
            await post_json(client, images_json(jpeg()), headers={"X-SLA-Tier": "batch"})
        await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "batch"})
    assert count("200") == before + 2 + 1


def test_gateway_and_handler_agree_on_the_contract():
    gateway_side = (
        image_classifier.IMAGES, image_classifier.PIXELS, image_classifier.PROBABILITIES, image_classifier.LABELS,
        image_classifier.PIXEL_DIMS, image_classifier.TOP_K, image_classifier.MAX_IMAGES,
    )
    handler_side = (
        handler.V2_IMAGES_INPUT, handler.V2_PIXELS_INPUT, handler.V2_PROBABILITIES_OUTPUT, handler.V2_LABELS_OUTPUT,
        (3, handler.CROP_SIZE, handler.CROP_SIZE), handler.TOP_K, handler.V2_MAX_IMAGES,
    )
    assert gateway_side == handler_side
