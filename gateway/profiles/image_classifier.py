"""`image-classifier`: JPEG/PNG in, the five most likely classes out (tiergate's own handler,
torchserve_backend/handler.py; its V2_* constants are the contract with this module).

TorchServe API: the raw image bytes, answered with `{label: probability}`. Open Inference:
exactly one input, `images` (BYTES [N], files) or `pixels` (FP32 [N,3,224,224], already
preprocessed), answered with `top5_probabilities` and `top5_labels`. The image's declared
size is checked here, so a decompression bomb never costs a pool a decode.
"""

from __future__ import annotations

import base64
import re

import orjson

from ..config import ShadowCompare
from ..errors import GatewayError, bad_request
from ..model_config import ImageClassifierModel
from ..v2_codec import tensors_from_answer
from .base import Comparison, PoolBody, Tensor, TensorSchema
from .topk import compare_top_k, parse_top_k

# curl --data-binary sends form-urlencoded by default and TorchServe accepts it,
# so a TorchServe client that only changes its host must be accepted too.
IMAGE_CONTENT_TYPES = frozenset(
    {"", "image/jpeg", "image/png", "application/octet-stream", "application/x-www-form-urlencoded"}
)
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
IMAGE_MAGIC = (JPEG_MAGIC, PNG_MAGIC)
# The pools' decoding limits (torchserve_backend/handler.py defaults).
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 20
# Frame-header markers (SOF0..SOF15 without DHT, JPG and DAC) and markers with no length.
JPEG_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
JPEG_SEGMENTS_SCANNED = 64  # real files reach the frame header within a handful
JPEG_FILL = re.compile(rb"\xff+")

IMAGES, PIXELS = "images", "pixels"
PROBABILITIES, LABELS = "top5_probabilities", "top5_labels"
PIXEL_DIMS = (3, 224, 224)
TOP_K = 5
MAX_IMAGES = 32


class ImageClassifierProfile:
    inputs = [TensorSchema(IMAGES, "BYTES", (-1,), "images"), TensorSchema(PIXELS, "FP32", (-1, *PIXEL_DIMS), "images", "NCHW")]
    outputs = [TensorSchema(PROBABILITIES, "FP32", (-1, TOP_K)), TensorSchema(LABELS, "BYTES", (-1, TOP_K))]
    max_batch = MAX_IMAGES
    one_input_of = True  # the inputs are alternatives: a request carries exactly one

    def __init__(self, model: ImageClassifierModel) -> None:
        self.model = model

    def accept(self, content_type: str) -> str:
        if content_type not in IMAGE_CONTENT_TYPES:
            raise GatewayError(
                415, "UnsupportedMediaType",
                "send the raw image bytes (image/jpeg, image/png or application/octet-stream)",
            )
        return content_type

    def admit(self, body: bytes, content_type: str) -> PoolBody:
        check_image(body)
        return PoolBody(body, "application/octet-stream")

    def from_v2(self, tensors: list[Tensor]) -> PoolBody:
        if len(tensors) != 1 or tensors[0].name not in (IMAGES, PIXELS):
            raise bad_request(
                f"send exactly one input: {IMAGES!r} (BYTES [N]) or {PIXELS!r} (FP32 [N,{','.join(map(str, PIXEL_DIMS))}])"
            )
        [tensor] = tensors
        schema = self.inputs[0] if tensor.name == IMAGES else self.inputs[1]
        schema.check(tensor, self.max_batch)
        if tensor.name == IMAGES:
            canonical = {"name": IMAGES, "datatype": "BYTES", "shape": list(tensor.shape), "data": _base64_images(tensor)}
        else:
            canonical = {"name": PIXELS, "datatype": "FP32", "shape": list(tensor.shape), "data": tensor.data}
        return PoolBody(orjson.dumps({"inputs": [canonical]}, option=orjson.OPT_SERIALIZE_NUMPY), "application/json")

    def to_v2(self, answer: bytes) -> tuple[list[Tensor], str | None]:
        tensors, version = tensors_from_answer(orjson.loads(answer))
        produced = {tensor.name: tensor for tensor in tensors}
        return [produced[PROBABILITIES], produced[LABELS]], version

    def compare(self, primary: bytes, other: bytes, settings: ShadowCompare) -> Comparison:
        return compare_top_k(parse_top_k(primary, settings.top_k), parse_top_k(other, settings.top_k), settings.tolerance)

    def request_schema(self) -> dict:
        binary = {"schema": {"type": "string", "format": "binary"}}
        return {
            "required": True,
            "description": "the raw JPEG or PNG file",
            "content": {media: binary for media in ("image/jpeg", "image/png", "application/octet-stream")},
        }

    def answer_schema(self) -> dict:
        return {"application/json": {"schema": {
            "type": "object", "description": "the five most likely classes, label → probability",
            "additionalProperties": {"type": "number"}, "maxProperties": TOP_K,
        }}}


def _base64_images(tensor: Tensor) -> list[str]:
    """Each element checked as an image, as base64 (JSON BYTES carry files base64-encoded)."""
    encoded = []
    for index, item in enumerate(tensor.data):
        if isinstance(item, str):
            try:
                file = base64.b64decode(item, validate=True)
            except ValueError:  # binascii.Error, or a non-ASCII string
                raise bad_request(f"{IMAGES}[{index}] is not a base64 string (JSON BYTES carry images base64-encoded)") from None
        else:
            file = item
        try:
            check_image(file)
        except GatewayError as exc:
            raise bad_request(f"{IMAGES}[{index}]: {exc.message}") from None
        encoded.append(item if isinstance(item, str) else base64.b64encode(file).decode("ascii"))
    return encoded


def check_image(body: bytes) -> None:
    if not body:
        raise bad_request("empty body: send the image bytes")
    if not body.startswith(IMAGE_MAGIC):
        raise bad_request("body is not a JPEG or PNG image")
    size = declared_size(body)
    if size is None:
        return  # not found cheaply: the pool's decoder is the judge
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise bad_request(f"image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels")
    if min(width, height) == 0:
        raise bad_request(f"image is {width}x{height} pixels: it has none")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise bad_request(
            f"image is {width}x{height} pixels; aspect ratios beyond {MAX_ASPECT_RATIO}:1 are not accepted"
        )


def declared_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG's IHDR or a JPEG's frame header declares it, without
    decoding; None when it is not where a well-formed file has it."""
    if body.startswith(PNG_MAGIC):
        if body[12:16] != b"IHDR" or len(body) < 24:
            return None
        return int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
    at = 2  # past SOI; each segment is 0xFF fill..., a marker byte, then a 2-byte length
    for _ in range(JPEG_SEGMENTS_SCANNED):
        fill = JPEG_FILL.match(body, at)
        if fill is None or fill.end() + 8 > len(body):
            return None
        at = fill.end()
        marker = body[at]
        if marker in JPEG_FRAME_MARKERS:  # length, precision, height, width
            return int.from_bytes(body[at + 6:at + 8], "big"), int.from_bytes(body[at + 4:at + 6], "big")
        at += 1 if marker in JPEG_STANDALONE_MARKERS else 1 + int.from_bytes(body[at + 1:at + 3], "big")
    return None
