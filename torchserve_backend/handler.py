"""TorchServe handler shared by every tiergate model variant.

The MAR carries ``variant.json`` naming its artifacts; this handler loads the
best one the serving host can run and reports the backend it picked in the
``X-Tiergate-Backend`` response header, and in ``X-Tiergate-Batch-Size`` how many images
the call that answered a request carried (TorchServe's batch, or a multi-image request):

* ``cpu-int8``      TorchScript FX-quantized model (int8 MAR)
* ``tensorrt-fp16`` Torch-TensorRT ExportedProgram (gpu MAR built where TensorRT ran)
* ``inductor-cuda`` fp32 ExportedProgram under torch.compile (gpu MAR, CUDA without TensorRT)
* ``cpu-fp32``      fp32 ExportedProgram run eagerly (fp32 MAR, or gpu MAR on a host without CUDA)

A request is either raw JPEG/PNG bytes (TorchServe's API; answered with a
``{label: probability}`` top-5) or an Open Inference Protocol JSON object (the
gateway's ``/v2`` API; answered with that protocol's outputs), so both APIs share
the pools and their batches.

TorchServe imports this file as a top-level module from the model directory,
so it must depend only on torch, torchvision and Pillow.  It exposes a
module-level ``handle`` function (TorchServe's function entry point) rather
than a single class, which leaves room for helper classes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as transforms

logger = logging.getLogger(__name__)

BACKEND_HEADER = "X-Tiergate-Backend"
BATCH_SIZE_HEADER = "X-Tiergate-Batch-Size"
BACKEND_TENSORRT_FP16 = "tensorrt-fp16"
BACKEND_INDUCTOR_CUDA = "inductor-cuda"
BACKEND_CPU_FP32 = "cpu-fp32"
BACKEND_CPU_INT8 = "cpu-int8"

VARIANT_FILE = "variant.json"
LABELS_FILE = "index_to_name.json"

# variant.json "artifacts" keys: which serialized model a MAR holds.
ARTIFACT_INT8 = "int8-torchscript"
ARTIFACT_FP32 = "fp32-exported-program"
ARTIFACT_TENSORRT = "tensorrt-fp16-exported-program"

MAX_IMAGE_PIXELS_ENV = "TIERGATE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
ACCEPTED_IMAGE_FORMATS = ("JPEG", "PNG")
# Resizing the short side to 256 scales the long side by the same factor, so a
# 2x100000 image (legal by pixel count) would become gigapixels: bound the ratio.
MAX_ASPECT_RATIO = 20
TOP_K = 5

# The Open Inference Protocol (KServe v2) form: a JSON body holding one input tensor,
# either encoded images or pixels already preprocessed like `preprocess_image` does.
# The gateway (gateway/v2.py) validates /v2 requests and forwards them in exactly this
# form; these names and limits are the contract between the two and must match.
V2_IMAGES_INPUT = "images"  # BYTES [N]: base64 JPEG or PNG files
V2_PIXELS_INPUT = "pixels"  # FP32 [N, 3, 224, 224]: ImageNet-normalized RGB
V2_PROBABILITIES_OUTPUT = "top5_probabilities"  # FP32 [N, 5], most likely first
V2_LABELS_OUTPUT = "top5_labels"  # BYTES [N, 5], the classes of those probabilities
V2_MAX_IMAGES = 32  # per request: one request must not monopolise a pool's batch

RESIZE_SIZE = 256
CROP_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InvalidInput(ValueError):
    """A request the client got wrong; answered with HTTP 400, never retried."""


def choose_gpu_backend(cuda_available: bool, trt_available: bool) -> str:
    """Backend for the gpu variant: TensorRT only with both CUDA and a TensorRT engine."""
    if cuda_available and trt_available:
        return BACKEND_TENSORRT_FP16
    if cuda_available:
        return BACKEND_INDUCTOR_CUDA
    return BACKEND_CPU_FP32


def tensorrt_importable() -> bool:
    """Importing torch_tensorrt also registers the ops a saved TRT program needs."""
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:  # a broken install (missing libnvinfer) must mean "no TensorRT"
        return False
    return True


def select_backend(variant: dict, cuda_available: bool, trt_importable: bool) -> str:
    """Pick the backend for a MAR's variant.json on a host with the given capabilities."""
    artifacts = variant["artifacts"]
    if ARTIFACT_INT8 in artifacts:
        return BACKEND_CPU_INT8
    if variant["variant"] == "gpu":
        has_engine = ARTIFACT_TENSORRT in artifacts and trt_importable
        return choose_gpu_backend(cuda_available, has_engine)
    return BACKEND_CPU_FP32


def decode_image(payload: bytes | bytearray, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG bytes into RGB, refusing oversized images before decoding pixels."""
    if not payload:
        raise InvalidInput("request body is empty; send JPEG or PNG bytes")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its two bomb thresholds: a log line per hostile request.
            # The size is checked right below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload), formats=ACCEPTED_IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise InvalidInput(f"image exceeds the limit of {max_pixels} pixels") from None
    except Exception:
        raise InvalidInput("request body is not a JPEG or PNG image") from None
    # Image.open only parsed the header, so a decompression bomb costs nothing yet.
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInput(f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidInput(
            f"image is {width}x{height} pixels; aspect ratios beyond {MAX_ASPECT_RATIO}:1 are not accepted"
        )
    try:
        image.load()
        return image.convert("RGB")
    except Exception:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        raise InvalidInput("image data is truncated or corrupt") from None


def crop_image(image: Image.Image) -> torch.Tensor:
    """Resize the short side to 256 and center-crop 224x224, as a (3, 224, 224) uint8 tensor.

    Resized as a tensor, not by Pillow: torch's antialiased uint8 resize costs a fifth of
    Pillow's (0.14 vs 0.79 ms for a 451x300 photo), which was half of a worker's preprocessing."""
    resized = transforms.resize(transforms.pil_to_tensor(image), [RESIZE_SIZE], antialias=True)
    return transforms.center_crop(resized, [CROP_SIZE])


def normalize_image(cropped: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalize a cropped uint8 image into a (3, 224, 224) float tensor."""
    return transforms.normalize(cropped.float().div_(255), IMAGENET_MEAN, IMAGENET_STD)


def preprocess_image(image: Image.Image) -> torch.Tensor:
    return normalize_image(crop_image(image))


def request_payload(request: Any) -> Any:
    if isinstance(request, dict):
        payload = request.get("data")
        return payload if payload is not None else request.get("body")
    return request


def open_inference_request(request: Any) -> bool:
    """TorchServe hands application/json bodies over already parsed, so a JSON object is an
    Open Inference Protocol request and is answered in that protocol's form."""
    return isinstance(request_payload(request), dict)


def request_to_tensor(request: Any, max_pixels: int) -> torch.Tensor:
    """A request's model inputs, (n, 3, 224, 224); the single place where input forms are told apart."""
    payload = request_payload(request)
    if payload is None:
        raise InvalidInput("request has no body; send JPEG or PNG bytes")
    if isinstance(payload, (bytes, bytearray)):
        return preprocess_image(decode_image(payload, max_pixels)).unsqueeze(0)
    if isinstance(payload, dict):
        return open_inference_tensor(payload, max_pixels)
    raise InvalidInput("expected a raw JPEG or PNG request body or an Open Inference Protocol JSON object")


def open_inference_tensor(body: dict, max_pixels: int) -> torch.Tensor:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(
            f"send exactly one input: {V2_IMAGES_INPUT!r} (BYTES [N]) or "
            f"{V2_PIXELS_INPUT!r} (FP32 [N,3,{CROP_SIZE},{CROP_SIZE}])"
        )
    tensor = inputs[0]
    name, datatype, shape, data = (tensor.get(key) for key in ("name", "datatype", "shape", "data"))
    if not isinstance(shape, list) or not shape or not all(type(dim) is int for dim in shape):
        raise InvalidInput("shape must be a non-empty list of integers")
    count = shape[0]
    if not 1 <= count <= V2_MAX_IMAGES:
        raise InvalidInput(f"a request carries 1 to {V2_MAX_IMAGES} images, not {count}")
    if not isinstance(data, list):
        raise InvalidInput("data must be a JSON list (binary tensor data ends at the gateway)")
    if name == V2_IMAGES_INPUT:
        if datatype != "BYTES" or shape != [count] or len(data) != count:
            raise InvalidInput(f"input {V2_IMAGES_INPUT!r} must be BYTES of shape [N] with N elements")
        return torch.stack([preprocess_image(decode_base64_image(item, index, max_pixels)) for index, item in enumerate(data)])
    if name == V2_PIXELS_INPUT:
        pixel_shape = [count, 3, CROP_SIZE, CROP_SIZE]
        if datatype != "FP32" or shape != pixel_shape or len(data) != math.prod(pixel_shape):
            raise InvalidInput(
                f"input {V2_PIXELS_INPUT!r} must be FP32 of shape [N,3,{CROP_SIZE},{CROP_SIZE}], "
                "its data flat and that many numbers"
            )
        try:
            pixels = torch.tensor(data, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidInput(f"input {V2_PIXELS_INPUT!r} data must be numbers") from None
        if pixels.dim() != 1 or not torch.isfinite(pixels).all():
            raise InvalidInput(f"input {V2_PIXELS_INPUT!r} data must be a flat list of finite numbers")
        return pixels.reshape(pixel_shape)
    raise InvalidInput(f"unknown input; this model takes {V2_IMAGES_INPUT!r} or {V2_PIXELS_INPUT!r}")


def decode_base64_image(item: Any, index: int, max_pixels: int) -> Image.Image:
    not_base64 = InvalidInput(f"{V2_IMAGES_INPUT}[{index}] is not a base64 string")
    if not isinstance(item, str):
        raise not_base64
    try:
        encoded = base64.b64decode(item, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII string
        raise not_base64 from None
    try:
        return decode_image(encoded, max_pixels)
    except InvalidInput as error:
        raise InvalidInput(f"{V2_IMAGES_INPUT}[{index}]: {error}") from None


def top_k_labels(probabilities: torch.Tensor, labels: dict[int, str], k: int = TOP_K) -> list[dict]:
    """Per row, an ordered {label: probability} dict of the k most likely classes."""
    k = min(k, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    return [
        {labels.get(int(i), str(int(i))): float(v) for v, i in zip(row_values, row_indices)}
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]


def open_inference_answer(probabilities: torch.Tensor, labels: dict[int, str], model_name: str, model_version: str) -> dict:
    """The Open Inference Protocol response for one request's rows of class probabilities.

    Labels go by class index rather than through a {label: probability} dict, because
    ImageNet names a few classes twice ("crane", "maillot").
    """
    k = min(TOP_K, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    shape = [len(values), k]
    return {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": [
            {"name": V2_PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": shape, "data": values.flatten().tolist()},
            {
                "name": V2_LABELS_OUTPUT, "datatype": "BYTES", "shape": shape,
                "data": [labels.get(index, str(index)) for index in indices.flatten().tolist()],
            },
        ],
    }


def invalid_input_body(message: str) -> dict:
    return {"code": 400, "type": "InvalidInput", "message": message}


@dataclass
class LoadedModel:
    module: Any
    backend: str
    device: torch.device
    input_dtype: torch.dtype
    max_batch_size: int

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits on CPU, splitting batches larger than the artifact allows."""
        outputs = []
        with torch.inference_mode():
            for chunk in batch.split(self.max_batch_size):
                chunk = chunk.to(self.device, self.input_dtype)
                outputs.append(self.module(chunk).float().cpu())
        return torch.cat(outputs)


def load_model(
    model_dir: Path,
    variant: dict,
    cuda_available: bool | None = None,
    trt_importable: bool | None = None,
    gpu_id: int | None = None,
) -> LoadedModel:
    """Load the artifact matching the backend this host supports."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if trt_importable is None:
        trt_importable = ARTIFACT_TENSORRT in variant["artifacts"] and tensorrt_importable()
    backend = select_backend(variant, cuda_available, trt_importable)
    artifacts = {name: Path(model_dir) / file for name, file in variant["artifacts"].items()}
    max_batch_size = int(variant["max_batch_size"])
    cpu = torch.device("cpu")
    cuda = torch.device("cuda", gpu_id or 0)

    if backend == BACKEND_CPU_INT8:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but still the fastest int8 runtime on CPU.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            module = torch.jit.load(str(artifacts[ARTIFACT_INT8]), map_location=cpu).eval()
        return LoadedModel(module, backend, cpu, torch.float32, max_batch_size)
    if backend == BACKEND_TENSORRT_FP16:
        try:
            module = load_tensorrt(artifacts[ARTIFACT_TENSORRT], cuda)
            return LoadedModel(module, backend, cuda, torch.float16, max_batch_size)
        except Exception:
            # An engine is tied to the GPU model and TensorRT version it was built for; one
            # that does not load here must not take the pool down. The MAR also carries the
            # fp32 program: compile that instead, and report what runs.
            logger.exception("TensorRT engine did not load; serving with %s", BACKEND_INDUCTOR_CUDA)
            backend = BACKEND_INDUCTOR_CUDA
    module = torch.export.load(str(artifacts[ARTIFACT_FP32])).module()
    if backend == BACKEND_INDUCTOR_CUDA:
        return LoadedModel(compile_for_cuda(module, cuda), backend, cuda, torch.float32, max_batch_size)
    return LoadedModel(module, backend, cpu, torch.float32, max_batch_size)


def load_tensorrt(path: Path, device: torch.device) -> Any:
    import torch_tensorrt

    return torch_tensorrt.load(str(path)).module().to(device)


def compile_for_cuda(module: Any, device: torch.device) -> Any:
    return torch.compile(module.to(device), dynamic=True)


def read_model_dir(model_dir: Path) -> tuple[dict, dict[int, str]]:
    variant = json.loads((Path(model_dir) / VARIANT_FILE).read_text())
    labels_path = Path(model_dir) / LABELS_FILE
    labels = {}
    if labels_path.exists():
        labels = {int(k): v for k, v in json.loads(labels_path.read_text()).items()}
    return variant, labels


def max_image_pixels_from_env() -> int:
    configured = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    return int(configured) if configured else DEFAULT_MAX_IMAGE_PIXELS


class TiergateHandler:
    def __init__(self, max_image_pixels: int | None = None):
        self.max_image_pixels = max_image_pixels
        self.model: LoadedModel | None = None
        self.labels: dict[int, str] = {}
        self.variant: dict = {}
        self.model_name = ""
        self.model_version = ""

    @property
    def initialized(self) -> bool:
        return self.model is not None

    @property
    def backend(self) -> str:
        return self.model.backend

    def initialize(self, context, cuda_available: bool | None = None) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.variant, self.labels = read_model_dir(model_dir)
        self.model_name = context.model_name
        self.model_version = ((context.manifest or {}).get("model") or {}).get("modelVersion", "")
        if self.max_image_pixels is None:
            self.max_image_pixels = max_image_pixels_from_env()
        self.model = load_model(
            model_dir, self.variant, cuda_available=cuda_available, gpu_id=properties.get("gpu_id")
        )
        # Warm up so compilation/profiling cost (and any load error) lands at
        # registration time instead of on the first client request.  Batch 1 and
        # batch 2 both: torch.compile specialises size 1 and compiles again for >1.
        for batch_size in sorted({1, min(2, self.model.max_batch_size)}):
            self.model.logits(torch.zeros(batch_size, 3, CROP_SIZE, CROP_SIZE))
        logger.info(
            "tiergate handler ready: arch=%s variant=%s backend=%s max_image_pixels=%d",
            self.variant.get("arch"),
            self.variant.get("variant"),
            self.backend,
            self.max_image_pixels,
        )

    def handle(self, data: list, context) -> list:
        responses: list[Any] = [None] * len(data)
        inputs: list[torch.Tensor] = []
        input_indices: list[int] = []
        for idx, request in enumerate(data):
            try:
                inputs.append(request_to_tensor(request, self.max_image_pixels))
                input_indices.append(idx)
            except InvalidInput as error:
                logger.info("request %d rejected: %s", idx, error)
                context.set_response_status(400, "Bad Request", idx)
                responses[idx] = invalid_input_body(str(error))

        batch_size = 0
        if inputs:
            batch = torch.cat(inputs)
            batch_size = len(batch)
            probabilities = self.model.logits(batch).softmax(dim=1)
            for idx, rows in zip(input_indices, probabilities.split([len(tensor) for tensor in inputs])):
                if open_inference_request(data[idx]):
                    responses[idx] = open_inference_answer(rows, self.labels, self.model_name, self.model_version)
                else:
                    [responses[idx]] = top_k_labels(rows, self.labels)

        for idx in range(len(data)):
            context.set_response_header(idx, BACKEND_HEADER, self.backend)
            context.set_response_header(idx, BATCH_SIZE_HEADER, str(batch_size))
            context.set_response_content_type(idx, "application/json")
        return responses


_service = TiergateHandler()


def handle(data, context):
    """TorchServe entry point; called with data=None once to initialize."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
