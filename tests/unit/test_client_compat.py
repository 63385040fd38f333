"""What real clients expect of the fronts, with pools faked: TorchServe's form uploads, PUT,
/ping and /api-description; Triton's model config; one version story for both APIs."""

import base64

import httpx
import pytest
import requests

from .fakes import by_pool, gateway, jpeg
from .test_v2 import v2_pool


def form(files) -> tuple[bytes, dict]:
    prepared = requests.Request("POST", "http://x/", files=files).prepare()
    return prepared.body, {"Content-Type": prepared.headers["Content-Type"]}


class Recorder:
    def __init__(self):
        self.seen: list[httpx.Request] = []

    def __call__(self, request):
        self.seen.append(request)
        return by_pool(request)


async def test_form_upload_and_put_send_the_pool_the_raw_image():
    pool = Recorder()
    body, headers = form({"data": ("kitten.jpg", jpeg(), "image/jpeg")})
    untyped, untyped_headers = form({"file": ("kitten.jpg", jpeg())})
    async with gateway(pool) as client:
        answers = [
            await client.post("/predictions/resnet18", content=body, headers=headers),
            await client.post("/predictions/resnet18", content=untyped, headers=untyped_headers),
            await client.put("/predictions/resnet18", content=jpeg()),  # curl -T
            await client.put("/predictions/resnet18/1.0", content=body, headers=headers),
        ]
    assert [answer.status_code for answer in answers] == [200] * 4
    assert all(answer.json() == {"tabby": 0.5, "tiger_cat": 0.2} for answer in answers)
    assert [(seen.method, seen.content, seen.headers["content-type"]) for seen in pool.seen] == [
        ("POST", jpeg(), "application/octet-stream")
    ] * 4


@pytest.mark.parametrize(
    "files, status, words",
    [
        ([("data", ("a.jpg", jpeg())), ("data", ("b.jpg", jpeg()))], 400, "2 'data' fields"),
        ({"data": ("a.txt", b"hello")}, 400, "not a JPEG or PNG"),  # the field is checked as a raw body is
        ({"data": ("a.json", b"{}", "application/json")}, 415, "raw image"),
    ],
)
async def test_bad_forms_are_4xx_json_and_never_reach_a_pool(files, status, words):
    pool = Recorder()
    body, headers = form(files)
    async with gateway(pool, max_body_bytes=8192) as client:
        answer = await client.post("/predictions/resnet18", content=body, headers=headers)
        no_boundary = await client.post("/predictions/resnet18", content=body, headers={"Content-Type": "multipart/form-data"})
    assert answer.status_code == status and words in answer.json()["message"]
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["message"]
    assert pool.seen == []


async def test_form_uploads_keep_the_body_limit():
    body, headers = form({"data": ("big.jpg", b"\xff\xd8\xff" + b"x" * 2000)})
    async with gateway(by_pool) as client:  # max_body_bytes: 1024
        answer = await client.post("/predictions/resnet18", content=body, headers=headers)
    assert answer.status_code == 413


async def test_ping_is_torchserves_and_follows_the_pools():
    def gpu_down(request):
        if request.url.host == "gpu.pool":
            raise httpx.ConnectError("refused", request=request)
        return by_pool(request)

    async with gateway(by_pool) as client:
        healthy = await client.get("/ping")
    async with gateway(gpu_down) as client:
        unhealthy = await client.get("/ping")
    assert (healthy.status_code, healthy.json()) == (200, {"status": "Healthy"})
    assert (unhealthy.status_code, unhealthy.json()) == (500, {"status": "Unhealthy"})  # as TorchServe answers


async def test_api_description_is_the_openapi_document():
    async with gateway(by_pool) as client:
        described = await client.get("/api-description")
        options = await client.options("/")
        document = await client.get("/openapi.json")
    assert described.json() == options.json() == document.json()
    assert "put" in document.json()["paths"]["/predictions/resnet18"]
    assert "multipart/form-data" in document.json()["paths"]["/predictions/resnet18"]["put"]["requestBody"]["content"]


TENSOR_MODELS = {
    "resnet18": {"profile": "image-classifier"},
    "digits": {
        "profile": "tensor", "max_batch": 8,
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    },
    "sentiment": {"profile": "json"},
}


async def test_triton_model_config_agrees_with_the_metadata():
    async with gateway(by_pool, models=TENSOR_MODELS) as client:
        for model in TENSOR_MODELS:
            config = (await client.get(f"/v2/models/{model}/config")).json()
            metadata = (await client.get(f"/v2/models/{model}")).json()
            assert config == (await client.get(f"/v2/models/{model}/versions/1.0/config")).json()
            batch = [-1] if config["max_batch_size"] > 0 else []
            for kind, declared in (("input", "inputs"), ("output", "outputs")):
                assert [
                    (t["name"], "BYTES" if t["data_type"] == "TYPE_STRING" else t["data_type"].removeprefix("TYPE_"),
                     batch + t.get("reshape", {"shape": t["dims"]})["shape"])
                    for t in config[kind]
                ] == [(t["name"], t["datatype"], t["shape"]) for t in metadata[declared]]
        resnet = (await client.get("/v2/models/resnet18/config")).json()
        digits = (await client.get("/v2/models/digits/config")).json()
        sentiment = (await client.get("/v2/models/sentiment/config")).json()
    # A request carries exactly one of images or pixels: Triton says each is optional.
    assert [(t["name"], t["optional"], t["format"]) for t in resnet["input"]] == [
        ("images", True, "FORMAT_NONE"), ("pixels", True, "FORMAT_NCHW"),
    ]
    assert resnet["max_batch_size"] == 32 and resnet["platform"] == "torchserve"
    assert digits["max_batch_size"] == 8 and digits["input"][0]["optional"] is False
    assert sentiment["max_batch_size"] == 0 and sentiment["input"][0]["dims"] == [1]


async def test_triton_only_endpoints_say_so_in_v2_shape():
    async with gateway(by_pool) as client:
        answers = [
            await client.post("/v2/repository/index"),
            await client.post("/v2/repository/models/resnet18/load"),
            await client.get("/v2/models/stats"),
            await client.get("/v2/models/resnet18/stats"),
            await client.get("/v2/systemsharedmemory/status"),
            await client.post("/v2/cudasharedmemory/region/r/unregister"),
            await client.get("/v2/trace/setting"),
        ]
    for answer in answers:
        assert answer.status_code == 400 and "does not implement Triton's" in answer.json()["error"]


@pytest.mark.parametrize("version, status", [("1.0", 200), (None, 200), ("1", 404), ("999", 404)])
async def test_versions_agree_across_both_apis(version, status):
    """`1` is not `1.0`, as TorchServe matches versions; metadata lists the one that works."""
    seen = []

    def pool(request):
        if request.url.path == "/ping":
            return by_pool(request)
        seen.append(request)
        return v2_pool(request) if request.headers["content-type"] == "application/json" else by_pool(request)

    suffix = f"/versions/{version}" if version else ""
    images = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(jpeg()).decode()]}]}
    async with gateway(pool) as client:
        answers = {
            "predict": await client.post("/predictions/resnet18" + (f"/{version}" if version else ""), content=jpeg()),
            "infer": await client.post(f"/v2/models/resnet18{suffix}/infer", json=images),
            "metadata": await client.get(f"/v2/models/resnet18{suffix}"),
            "ready": await client.get(f"/v2/models/resnet18{suffix}/ready"),
            "config": await client.get(f"/v2/models/resnet18{suffix}/config"),
        }
        metadata = (await client.get("/v2/models/resnet18")).json()
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(answers, status)
    assert metadata["versions"] == ["1.0"]
    if status == 404:
        assert seen == [] and "serves version 1.0" in answers["predict"].json()["message"]
    else:
        assert [request.url.path for request in seen] == [f"/predictions/resnet18{'/' + version if version else ''}"] * 2


async def test_form_fields_of_other_profiles_are_read_as_their_raw_bodies():
    seen = []

    def pool(request):
        seen.append((request.url.path, request.headers["content-type"], request.content))
        return httpx.Response(200, json={"ok": True})

    models = {
        "sentiment": {"profile": "json"},
        "blob": {"profile": "passthrough"},  # takes application/octet-stream
        "photos": {"profile": "passthrough", "content_types": ["image/jpeg"]},
    }
    async with gateway(pool, models=models) as client:
        body, headers = form({"data": (None, '{ "text": "x" }')})  # a plain field, as curl -F 'data={...}'
        document = await client.post("/predictions/sentiment", content=body, headers=headers)
        body, headers = form({"data": ("d.bin", b"\x00\x01", "application/octet-stream")})
        blob = await client.post("/predictions/blob", content=body, headers=headers)
        body, headers = form({"data": ("k.jpg", jpeg(), "image/jpeg")})
        photo = await client.post("/predictions/photos", content=body, headers=headers)
        body, headers = form({"data": ("k.jpg", jpeg())})  # untyped: this model names no untyped form
        untyped_photo = await client.post("/predictions/photos", content=body, headers=headers)
    assert [document.status_code, blob.status_code, photo.status_code, untyped_photo.status_code] == [200, 200, 200, 415]
    assert seen == [
        ("/predictions/sentiment", "application/json", b'{"text":"x"}'),  # canonical, as a raw document
        ("/predictions/blob", "application/octet-stream", b"\x00\x01"),
        ("/predictions/photos", "image/jpeg", jpeg()),
    ]
