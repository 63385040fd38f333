"""The TorchServe handler, driven directly with a real ts Context and tiny model artifacts."""

from __future__ import annotations

import functools
import io
import json
import logging
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from ts.context import Context, RequestProcessor
from ts.model_loader import TsModelLoader
from ts.service import Service

from model.archive import HANDLER_FILES
from model.quantize import STATIC, cpu_isa, write_int8_package
from torchserve_backend import handler
from torchserve_backend import tiergate_backends as backends
from torchserve_backend import tiergate_images as images

LABELS = [f"class-{i}" for i in range(10)]
PHOTO = Path(__import__("sklearn").__file__).parent / "datasets" / "images" / "china.jpg"


class TinyClassifier(nn.Module):
    """Cheap stand-in for resnet: (N, 3, 224, 224) -> (N, 10) logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, len(LABELS))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def tiny_model() -> tuple[TinyClassifier, torch.Tensor, tuple]:
    torch.manual_seed(0)
    example = torch.randn(2, 3, handler.CROP_SIZE, handler.CROP_SIZE)
    return TinyClassifier().eval(), example, ({0: torch.export.Dim("batch", min=1, max=8)},)


@functools.cache
def tiny_int8_package() -> bytes:
    """The tiny model's int8 package, compiled once per test run (AOTInductor takes seconds)."""
    model, example, dims = tiny_model()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "tiny-int8.pt2"
        write_int8_package(model, example, dims, STATIC, path, [example])
        return path.read_bytes()


def write_model_dir(
    path: Path, variant: str = "fp32", max_batch_size: int = 8, with_trt: bool = False, isa: str | None = None
) -> Path:
    """A model directory shaped like an unpacked tiergate MAR (the int8 one built for isa, default this CPU's)."""
    path.mkdir(parents=True, exist_ok=True)
    model, example, _ = tiny_model()
    artifacts = {backends.ARTIFACT_FP32: "tiny-fp32.pt2"}
    batch = torch.export.Dim("batch", min=1, max=max_batch_size)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(path / "tiny-fp32.pt2"))
    if variant == "int8":
        artifacts = {backends.ARTIFACT_INT8: "tiny-int8.pt2", **artifacts}
        (path / "tiny-int8.pt2").write_bytes(tiny_int8_package())
    if with_trt:
        artifacts[backends.ARTIFACT_TENSORRT] = "never-loaded-without-cuda.ep"
    spec = {"arch": "tiny", "variant": variant, "max_batch_size": max_batch_size, "artifacts": artifacts}
    if variant == "int8":
        spec[backends.ISA_FIELD] = isa or cpu_isa()
    (path / backends.VARIANT_FILE).write_text(json.dumps(spec))
    (path / backends.LABELS_FILE).write_text(json.dumps({str(i): name for i, name in enumerate(LABELS)}))
    return path


def make_context(model_dir: Path, requests: int = 0) -> Context:
    context = Context("tiny", str(model_dir), None, max(requests, 1), None, "test")
    context.request_processor = [RequestProcessor({}) for _ in range(requests)]
    return context


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    return PHOTO.read_bytes()


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("fp32"), max_batch_size=4)


@pytest.fixture
def fp32_handler(fp32_dir) -> handler.TiergateHandler:
    service = handler.TiergateHandler(max_image_pixels=handler.DEFAULT_MAX_IMAGE_PIXELS)
    service.initialize(make_context(fp32_dir), cuda_available=False)
    return service


def run(service: handler.TiergateHandler, model_dir: Path, requests: list) -> tuple[list, Context]:
    context = make_context(model_dir, len(requests))
    return service.handle(requests, context), context


def status(context: Context, idx: int) -> int:
    return context.get_response_status(idx)[0]


def test_returns_top5_labels_highest_first(fp32_handler, fp32_dir, photo_jpeg):
    [answer], context = run(fp32_handler, fp32_dir, [{"data": photo_jpeg}])

    assert status(context, 0) == 200
    assert len(answer) == 5 and set(answer) <= set(LABELS)
    probabilities = list(answer.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 < p < 1 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-6
    json.dumps(answer)  # TorchServe serialises the dict as the response body
    assert context.get_response_headers(0)[handler.BACKEND_HEADER] == backends.BACKEND_CPU_FP32
    assert context.get_response_content_type(0) == "application/json"


def test_batch_runs_one_forward_and_matches_single_requests(fp32_handler, fp32_dir, photo_jpeg):
    png = encode(Image.open(PHOTO).rotate(90, expand=True), "PNG")
    [single_jpeg], _ = run(fp32_handler, fp32_dir, [{"body": photo_jpeg}])
    [single_png], _ = run(fp32_handler, fp32_dir, [{"body": bytearray(png)}])

    forward_batches = []
    module = fp32_handler.model.module
    fp32_handler.model.module = lambda x: forward_batches.append(len(x)) or module(x)
    answers, context = run(
        fp32_handler, fp32_dir, [{"data": photo_jpeg}, {"body": png}, {"data": photo_jpeg}]
    )

    assert forward_batches == [3]
    assert [status(context, i) for i in range(3)] == [200, 200, 200]
    assert {context.get_response_headers(i)[handler.BATCH_SIZE_HEADER] for i in range(3)} == {"3"}
    assert list(answers[0]) == list(single_jpeg) == list(answers[2])
    assert list(answers[1]) == list(single_png)
    assert answers[0] != answers[1]
    for batched, single in ((answers[0], single_jpeg), (answers[1], single_png)):
        assert list(batched.values()) == pytest.approx(list(single.values()), rel=1e-4)


def test_batches_above_the_artifact_limit_are_split(fp32_handler, fp32_dir, photo_jpeg):
    forward_batches = []
    module = fp32_handler.model.module
    fp32_handler.model.module = lambda x: forward_batches.append(len(x)) or module(x)

    answers, _ = run(fp32_handler, fp32_dir, [{"data": photo_jpeg}] * 9)

    assert forward_batches == [4, 4, 1]  # the fixture's max_batch_size is 4
    assert all(len(answer) == 5 for answer in answers)


def test_bad_inputs_get_400_while_the_rest_of_the_batch_succeeds(fp32_handler, fp32_dir, photo_jpeg):
    requests = [
        {"data": photo_jpeg},
        {"data": b""},
        {"body": b"%PDF-1.7 definitely not an image"},
        {"data": photo_jpeg[: len(photo_jpeg) // 2]},
        {"body": png_declaring(50_000, 50_000)},
        {"body": {"inputs": []}},  # a JSON body, parsed by TorchServe
        {},
        {"data": encode(Image.new("RGB", (32, 32)), "GIF")},
        {"body": photo_jpeg},
    ]
    answers, context = run(fp32_handler, fp32_dir, requests)

    assert [status(context, i) for i in range(len(requests))] == [200] + [400] * 7 + [200]
    for idx in range(1, 8):
        assert answers[idx]["code"] == 400 and answers[idx]["type"] == "InvalidInput"
        assert answers[idx]["message"]
        assert context.get_response_status(idx)[1] == "Bad Request"
    assert "empty" in answers[1]["message"]
    assert "truncated" in answers[3]["message"]
    assert "limit" in answers[4]["message"]
    assert answers[0] == answers[8] and len(answers[0]) == 5
    for idx in range(len(requests)):
        assert context.get_response_headers(idx)[handler.BACKEND_HEADER] == backends.BACKEND_CPU_FP32
        assert context.get_response_headers(idx)[handler.BATCH_SIZE_HEADER] == "2"  # the images that ran


@pytest.mark.parametrize("pil_limit", [Image.MAX_IMAGE_PIXELS, None], ids=["pil-default", "pil-unlimited"])
def test_decompression_bomb_is_refused_before_decoding(fp32_handler, fp32_dir, monkeypatch, pil_limit):
    # TorchServe sets PIL's own limit to None when limit_max_image_pixels is off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    started = time.perf_counter()
    answers, context = run(fp32_handler, fp32_dir, [{"data": png_declaring(50_000, 50_000)}])

    assert time.perf_counter() - started < 2.0
    assert status(context, 0) == 400
    assert "limit" in answers[0]["message"]


def test_preprocessing_matches_torchvision_reference_pipeline(photo_jpeg):
    """The tensor resize is a speed change only: the same input as torchvision's classic
    Resize(256) / CenterCrop(224) / ToTensor / Normalize on a Pillow image, to about a grey level."""
    from torchvision import transforms

    reference = transforms.Compose([
        transforms.Resize(images.RESIZE_SIZE), transforms.CenterCrop(handler.CROP_SIZE),
        transforms.ToTensor(), transforms.Normalize(images.IMAGENET_MEAN, images.IMAGENET_STD),
    ])
    image = handler.decode_image(photo_jpeg, handler.DEFAULT_MAX_IMAGE_PIXELS)
    ours, theirs = handler.preprocess_image(image), reference(image)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max() < 0.05  # one grey level is 1/255/std ≈ 0.017


def test_extreme_aspect_ratio_is_refused_before_resizing():
    # Few pixels, but resizing the short side to 256 would make it 3.2 gigapixels.
    started = time.perf_counter()
    with pytest.raises(handler.InvalidInput, match="aspect ratio"):
        handler.decode_image(png_declaring(2, 25_000), handler.DEFAULT_MAX_IMAGE_PIXELS)
    assert time.perf_counter() - started < 1.0
    panorama = handler.decode_image(
        encode(Image.new("RGB", (400, 40)), "PNG"), handler.DEFAULT_MAX_IMAGE_PIXELS
    )
    assert handler.preprocess_image(panorama).shape == (3, 224, 224)


def test_pixel_limit_is_our_own_and_configurable(fp32_dir, monkeypatch):
    # 7000x7000 is under PIL's built-in bomb limit, so only the handler's limit refuses it.
    with pytest.raises(handler.InvalidInput, match="7000x7000"):
        handler.decode_image(png_declaring(7000, 7000), handler.DEFAULT_MAX_IMAGE_PIXELS)

    monkeypatch.setenv(images.MAX_IMAGE_PIXELS_ENV, "1000")
    service = handler.TiergateHandler()
    service.initialize(make_context(fp32_dir), cuda_available=False)
    small, large = encode(Image.new("RGB", (30, 30)), "PNG"), encode(Image.new("RGB", (40, 40)), "PNG")
    answers, context = run(service, fp32_dir, [{"data": small}, {"data": large}])

    assert [status(context, 0), status(context, 1)] == [200, 400]
    assert "40x40" in answers[1]["message"]


def test_rejections_never_log_the_payload(fp32_handler, fp32_dir, caplog):
    secret = b"SECRET-CARD-4111111111111111"
    with caplog.at_level(logging.DEBUG):
        answers, _ = run(fp32_handler, fp32_dir, [{"data": secret}, {"data": b"\xff\xd8\xff" + secret}])

    assert caplog.records, "rejections should be logged"
    assert "SECRET" not in caplog.text and "4111" not in caplog.text
    assert all("SECRET" not in answer["message"] for answer in answers)


@pytest.mark.parametrize(
    "isa, backend",
    [
        (None, "cpu-int8"),  # built on this CPU
        ("SVE256", "cpu-fp32"),  # an Arm ISA, never this host's: the MAR's fp32 program serves
    ],
)
def test_an_int8_mar_runs_its_package_only_on_the_cpu_it_was_built_for(tmp_path, photo_jpeg, caplog, isa, backend):
    model_dir = write_model_dir(tmp_path / "int8", variant="int8", isa=isa)
    service = handler.TiergateHandler()
    service.initialize(make_context(model_dir), cuda_available=False)
    [answer], context = run(service, model_dir, [{"data": photo_jpeg}])

    assert service.backend == backend
    assert context.get_response_headers(0)[handler.BACKEND_HEADER] == backend
    assert len(answer) == 5
    assert ("int8 package built for SVE256 does not run on this" in caplog.text) is (isa is not None)


@pytest.mark.parametrize(
    "built_for, host, runs",
    [
        ("AVX512", "AVX512", True),
        ("AVX2", "AVX512", True),  # a wider ISA runs the narrower one's code
        ("AVX512", "AVX2", False),
        ("AVX2", "DEFAULT", False),
        ("SVE256", "AVX512", False),
        ("SVE256", "SVE256", True),
        (None, "AVX512", False),
    ],
)
def test_int8_runs_only_where_its_vector_isa_does(built_for, host, runs):
    assert backends.int8_runs_here(built_for, host) is runs


@pytest.mark.parametrize(
    "cuda, trt, expected",
    [
        (True, True, "tensorrt-fp16"),
        (True, False, "inductor-cuda"),
        (False, True, "cpu-fp32"),
        (False, False, "cpu-fp32"),
    ],
)
def test_choose_gpu_backend(cuda, trt, expected):
    assert backends.choose_gpu_backend(cuda, trt) == expected


@pytest.mark.parametrize(
    "variant, artifacts, cuda, trt_importable, expected",
    [
        ("int8", [backends.ARTIFACT_INT8, backends.ARTIFACT_FP32], True, True, "cpu-int8"),  # built on this CPU
        ("fp32", [backends.ARTIFACT_FP32], True, True, "cpu-fp32"),
        ("gpu", [backends.ARTIFACT_TENSORRT, backends.ARTIFACT_FP32], True, True, "tensorrt-fp16"),
        ("gpu", [backends.ARTIFACT_TENSORRT, backends.ARTIFACT_FP32], True, False, "inductor-cuda"),
        ("gpu", [backends.ARTIFACT_FP32], True, True, "inductor-cuda"),  # built without TensorRT
        ("gpu", [backends.ARTIFACT_TENSORRT, backends.ARTIFACT_FP32], False, True, "cpu-fp32"),
    ],
)
def test_select_backend(variant, artifacts, cuda, trt_importable, expected):
    spec = {"variant": variant, "artifacts": {name: "file" for name in artifacts}, backends.ISA_FIELD: cpu_isa()}
    assert backends.select_backend(spec, cuda, trt_importable) == expected


def test_gpu_mar_without_cuda_falls_back_to_cpu_fp32_never_tensorrt(tmp_path, photo_jpeg):
    model_dir = write_model_dir(tmp_path / "gpu", variant="gpu", with_trt=True)
    service = handler.TiergateHandler()
    # No cuda_available override: this is the real detection on a CPU-only host.
    assert not torch.cuda.is_available(), "this test documents the CPU-only fallback"
    service.initialize(make_context(model_dir))
    [answer], context = run(service, model_dir, [{"data": photo_jpeg}])

    assert service.backend == backends.BACKEND_CPU_FP32
    assert "tensorrt" not in context.get_response_headers(0)[handler.BACKEND_HEADER]
    assert len(answer) == 5


def test_tensorrt_engine_that_fails_to_load_falls_back_to_compiled_fp32(tmp_path, monkeypatch, caplog):
    model_dir = write_model_dir(tmp_path / "gpu", variant="gpu", with_trt=True)
    variant, _ = handler.read_model_dir(model_dir)

    def engine_for_another_gpu(path, device):
        raise RuntimeError("engine plan built for a different compute capability")

    compiled = []
    monkeypatch.setattr(backends, "load_tensorrt", engine_for_another_gpu)
    monkeypatch.setattr(backends, "compile_for_cuda", lambda module, device: compiled.append(device) or module)
    loaded = backends.load_model(model_dir, variant, cuda_available=True, trt_importable=True)

    assert loaded.backend == backends.BACKEND_INDUCTOR_CUDA and loaded.input_dtype == torch.float32
    assert compiled == [torch.device("cuda", 0)]
    assert "TensorRT engine did not load" in caplog.text


def test_torchserve_model_loader_finds_the_entry_point_and_initializes(tmp_path, photo_jpeg, monkeypatch):
    """TorchServe imports handler.py as a top-level module, its modules beside it, and calls
    handle(None, ctx) first."""
    model_dir = write_model_dir(tmp_path / "unpacked-mar", variant="int8")
    for file in HANDLER_FILES:  # what every MAR carries
        shutil.copy(file, model_dir / file.name)
    monkeypatch.syspath_prepend(str(model_dir))
    top_level = ["handler"] + [file.stem for file in HANDLER_FILES]
    for module in top_level:
        monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        service = TsModelLoader().load("tiny", str(model_dir), handler="handler.py", batch_size=2)
        batch = [
            {
                "requestId": request_id,
                "parameters": [{"name": "body", "value": body, "contentType": "image/jpeg"}],
            }
            for request_id, body in ((b"good", photo_jpeg), (b"bad", b"junk"))
        ]
        headers, inputs, _ = Service.retrieve_data_for_inference(batch)
        service.context.request_processor = headers
        answers = service._entry_point(inputs, service.context)
        loaded_from = {module: sys.modules[module].__file__ for module in top_level}
    finally:
        for module in top_level:
            sys.modules.pop(module, None)

    assert all(Path(file).parent == model_dir for file in loaded_from.values())

    assert len(answers[0]) == 5 and answers[1]["code"] == 400
    assert [service.context.get_response_status(i)[0] for i in range(2)] == [200, 400]
    assert service.context.get_response_headers(1)[handler.BACKEND_HEADER] == "cpu-int8"
