"""Real clients, unchanged, against the real stack: Triton's (tritonclient, reading the model
config as image_client.py and Performance Analyzer do), TorchServe's (curl -F, curl -T,
requests' form upload, /ping), one version story over both APIs, and the pools' own metrics
under their own names. Where a TorchServe client can ask the pool itself, the gateway must
answer the same."""

from __future__ import annotations

import base64
import shutil
import subprocess

import httpx
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from .conftest import pool_key
from .images import cat_jpeg

MODEL = "resnet18"
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def triton_client(stack):
    client = triton.InferenceServerClient(stack.url.removeprefix("http://"), network_timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def cpu_pool(stack) -> dict:
    """The pool the default tier (standard) is served by, as `tiergate status` reports it."""
    return next(pool for pool in stack.status()["pools"] if pool["name"] == "cpu")


@pytest.fixture(scope="module")
def cat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clients") / "kitten.jpg"
    path.write_bytes(cat_jpeg())
    return path


def test_model_config_matches_metadata_for_every_model(stack, triton_client):
    for model in stack.config["models"]:
        config, metadata = triton_client.get_model_config(model), triton_client.get_model_metadata(model)
        batch = [-1] if config["max_batch_size"] > 0 else []
        for kind, declared in (("input", "inputs"), ("output", "outputs")):
            from_config = [
                (tensor["name"], "BYTES" if tensor["data_type"] == "TYPE_STRING" else tensor["data_type"].removeprefix("TYPE_"),
                 batch + tensor.get("reshape", {"shape": tensor["dims"]})["shape"])
                for tensor in config[kind]
            ]
            assert from_config == [(t["name"], t["datatype"], t["shape"]) for t in metadata[declared]], model
        assert metadata["versions"] == [stack.config["models"][model].get("version", "1.0")]
    resnet = triton_client.get_model_config(MODEL)
    assert [tensor["optional"] for tensor in resnet["input"]] == [True, True]  # a request carries one of them


def image_client_request(config: dict, file_path, binary: bool) -> tuple[list, list]:
    """What Triton's image_client.py builds, from the model config alone: the NCHW/NHWC input,
    its C, H, W from `dims` (the batch dimension from max_batch_size), the image resized to
    them and scaled (ImageNet normalization, image_client's --scaling choice), and the outputs
    the config lists."""
    from PIL import Image

    [image_input] = [tensor for tensor in config["input"] if tensor["format"] in ("FORMAT_NCHW", "FORMAT_NHWC")]
    assert image_input["data_type"] == "TYPE_FP32" and len(image_input["dims"]) == 3
    nchw = image_input["format"] == "FORMAT_NCHW"
    channels, height, width = image_input["dims"] if nchw else np.roll(image_input["dims"], 1)
    assert channels == 3
    image = np.asarray(Image.open(file_path).convert("RGB").resize((width, height)), np.float32) / 255.0
    scaled = (image - MEAN) / STD
    array = (scaled.transpose(2, 0, 1) if nchw else scaled)[np.newaxis] if config["max_batch_size"] > 0 else scaled
    tensor = triton.InferInput(image_input["name"], list(array.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=binary)
    outputs = [triton.InferRequestedOutput(output["name"], binary_data=binary) for output in config["output"]]
    return [tensor], outputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_request_built_only_from_the_config_is_served(stack, triton_client, cat_file, binary):
    config = triton_client.get_model_config(MODEL)
    inputs, outputs = image_client_request(config, cat_file, binary)
    result = triton_client.infer(MODEL, inputs, outputs=outputs)
    for output in config["output"]:
        assert list(result.as_numpy(output["name"]).shape) == [1, *output["dims"]]
    with stack.client() as client:
        torchserve_answer = client.post(f"/predictions/{MODEL}", content=cat_jpeg()).json()
    top1 = result.as_numpy("top5_labels")[0][0]
    top1 = top1.decode() if isinstance(top1, bytes) else top1  # binary BYTES are bytes, JSON's str
    assert top1 in torchserve_answer  # a different resize than the pool's, the same cat


def answers_alike(through: httpx.Response | requests.Response, direct: httpx.Response | requests.Response) -> None:
    assert (through.status_code, direct.status_code) == (200, 200), (through.text, direct.text)
    mine, theirs = through.json(), direct.json()
    assert list(mine) == list(theirs)
    assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=1e-4)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("upload", [["-F", "data=@{file}"], ["-T", "{file}"]], ids=["curl -F", "curl -T"])
def test_curl_as_torchserve_documents_it(stack, cpu_pool, cat_file, upload):
    def curl(base: str, headers: dict[str, str]) -> httpx.Response:
        command = ["curl", "-sS", "--noproxy", "*", "-w", "\n%{http_code}", f"{base}/predictions/{MODEL}"]
        command += [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        done = subprocess.run([*command, *(arg.format(file=cat_file) for arg in upload)],
                              capture_output=True, text=True, timeout=60, check=True)
        body, _, status = done.stdout.rpartition("\n")
        return httpx.Response(int(status), text=body)

    # The pool's TorchServe keeps its token auth on: a client calling it straight presents its key.
    answers_alike(curl(stack.url, {}), curl(cpu_pool["inference_url"], pool_key(cpu_pool, "inference")))


def test_requests_form_upload_and_ping(stack, cpu_pool, cat_file):
    session = requests.Session()
    session.trust_env = False
    targets = ((stack.url, {}), (cpu_pool["inference_url"], pool_key(cpu_pool, "inference")))
    for base, headers in targets:
        assert session.get(f"{base}/ping", headers=headers, timeout=10).json() == {"status": "Healthy"}
    through, direct = (
        session.post(f"{base}/predictions/{MODEL}", files={"data": cat_file.open("rb")}, headers=headers, timeout=60)
        for base, headers in targets
    )
    answers_alike(through, direct)
    two_images = session.post(f"{stack.url}/predictions/{MODEL}", files=[("data", cat_jpeg()), ("data", cat_jpeg())], timeout=60)
    assert two_images.status_code == 400 and "send one" in two_images.json()["message"]
    described = session.get(f"{stack.url}/api-description", timeout=10)
    assert described.status_code == 200 and f"/predictions/{MODEL}" in described.json()["paths"]


@pytest.mark.parametrize("version, status", [("1.0", 200), (None, 200), ("1", 404), ("999", 404)])
def test_version_matrix_over_both_apis(stack, cpu_pool, triton_client, version, status):
    """The gateway agrees with the pool on which versions exist (TorchServe: `1` is not `1.0`),
    and readiness, metadata, config and inference agree with each other on both APIs."""
    predict = f"/predictions/{MODEL}" + (f"/{version}" if version else "")
    v2 = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "")
    images = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(cat_jpeg()).decode()]}]}
    with stack.client() as client, httpx.Client(
        base_url=cpu_pool["inference_url"], headers=pool_key(cpu_pool, "inference"), trust_env=False, timeout=60
    ) as pool:
        statuses = {
            "pool predict": pool.post(predict, content=cat_jpeg()).status_code,
            "predict": client.post(predict, content=cat_jpeg()).status_code,
            "predict PUT": client.put(predict, content=cat_jpeg()).status_code,
            "v2 infer": client.post(f"{v2}/infer", json=images).status_code,
            "v2 ready": client.get(f"{v2}/ready").status_code,
            "v2 metadata": client.get(v2).status_code,
            "v2 config": client.get(f"{v2}/config").status_code,
        }
    assert statuses == dict.fromkeys(statuses, status)
    assert triton_client.is_model_ready(MODEL, version or "") is (status == 200)
    if status == 404:
        with pytest.raises(InferenceServerException) as refused:
            triton_client.get_model_config(MODEL, version)
        assert refused.value.status() == "404"


def samples(text: str) -> set[tuple[str, frozenset]]:
    """(name, labels) of every sample. prometheus-client's parser writes a counter's samples
    as name_total whatever the text said, so names are checked on the raw text too."""
    return {
        (sample.name, frozenset(sample.labels.items()))
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def written_names(text: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}


def type_lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_pool_series_is_on_the_gateway_under_its_own_name(stack):
    with stack.client() as client:
        client.post(f"/predictions/{MODEL}", content=cat_jpeg(), headers={"X-SLA-Tier": "premium"})
        client.post(f"/predictions/{MODEL}", content=cat_jpeg(), headers={"X-SLA-Tier": "standard"})
    for pool in stack.status()["pools"]:
        direct = httpx.get(pool["metrics_url"], trust_env=False, timeout=5).text  # first: series only appear
        with stack.client() as client:
            through = client.get("/metrics").text
        assert samples(direct), f"pool {pool['name']} exports nothing"
        missing = {(name, labels | {("pool", pool["name"])}) for name, labels in samples(direct)} - samples(through)
        assert not missing, f"pool {pool['name']} series missing on the gateway: {sorted(missing)[:5]}"
        assert written_names(direct) <= written_names(through), written_names(direct) - written_names(through)
        assert type_lines(direct) <= type_lines(through), type_lines(direct) - type_lines(through)
        # TorchServe writes its counters without _total (Requests2XX): what re-serializing renamed.
        counters = {line.split()[2] for line in type_lines(direct) if line.split()[3] == "counter"}
        assert counters & written_names(direct), "the pool wrote no counter under its bare name"
