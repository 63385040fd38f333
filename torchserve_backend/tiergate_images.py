"""Image classifiers: JPEG/PNG bytes, or the Open Inference Protocol's images/pixels tensors.

A request is either raw JPEG/PNG bytes (TorchServe's API; answered with a
``{label: probability}`` top-5) or an Open Inference Protocol JSON object (the
gateway's ``/v2`` API; answered with that protocol's outputs), so both APIs share
the pools and their batches.

Ships in the MAR as a top-level module beside handler.py: depends only on torch,
torchvision, Pillow and its sibling tiergate_backends.
"""

from __future__ import annotations

import base64
import io
import math
import os
import warnings
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as transforms

try:  # inside a MAR: TorchServe puts the model directory on the path, siblings are top-level
    from tiergate_backends import InvalidInput, request_payload
except ModuleNotFoundError:
    from torchserve_backend.tiergate_backends import InvalidInput, request_payload

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


def max_image_pixels_from_env() -> int:
    configured = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    return int(configured) if configured else DEFAULT_MAX_IMAGE_PIXELS


class ImageInputs:
    """The image-classifier kind: how its requests become rows and its rows become answers."""

    def __init__(self, variant: dict, labels: dict[int, str], max_image_pixels: int | None = None):
        self.labels = labels
        self.max_image_pixels = max_image_pixels if max_image_pixels is not None else max_image_pixels_from_env()

    def rows(self, request: Any) -> torch.Tensor:
        return request_to_tensor(request, self.max_image_pixels)

    def collate(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(rows)

    def answer(self, request: Any, probabilities: torch.Tensor, model_name: str, model_version: str) -> Any:
        if open_inference_request(request):
            return open_inference_answer(probabilities, self.labels, model_name, model_version)
        [top_k] = top_k_labels(probabilities, self.labels)
        return top_k

    def example(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, 3, CROP_SIZE, CROP_SIZE)
