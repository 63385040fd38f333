"""TorchServe handler shared by every tiergate model and variant.

The MAR's ``variant.json`` says which artifacts it holds (tiergate_backends picks the
one this host can run) and which kind of model it is, which decides how requests
become rows and rows become answers:

* ``image``  (default) JPEG/PNG bytes or v2 images/pixels → top-5 (tiergate_images)
* ``tensor`` v2 JSON tensors → v2 probabilities (tiergate_tensors)
* ``text``   ``{"text": ...}`` → label and probabilities (tiergate_text)

Every answer carries ``X-Tiergate-Backend`` (what ran) and ``X-Tiergate-Batch-Size``
(rows run together in this call: TorchServe's batch, or several rows in one request).
A request the handler cannot use gets a 400 with ``{"code", "type", "message"}``, alone:
the rest of its batch is answered. A describe request (``GET /models/<name>?customized=true``
on the management API) answers which backend and kind this worker runs.

TorchServe imports this file as a top-level module from the model directory, and the
modules above ship beside it (model/archive.py adds them to every MAR), so it depends
only on them, torch, torchvision and Pillow. It exposes a module-level ``handle``
function (TorchServe's function entry point).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

try:  # inside a MAR: TorchServe puts the model directory on the path, siblings are top-level
    import tiergate_backends as backends
    import tiergate_images as images
    import tiergate_tensors as tensors
    import tiergate_text as text
except ModuleNotFoundError:
    from torchserve_backend import tiergate_backends as backends
    from torchserve_backend import tiergate_images as images
    from torchserve_backend import tiergate_tensors as tensors
    from torchserve_backend import tiergate_text as text

# What the gateway's tests, fuzzers and benchmarks use from "the handler".
InvalidInput = backends.InvalidInput
BACKEND_HEADER, BATCH_SIZE_HEADER = backends.BACKEND_HEADER, backends.BATCH_SIZE_HEADER
CROP_SIZE, TOP_K, DEFAULT_MAX_IMAGE_PIXELS = images.CROP_SIZE, images.TOP_K, images.DEFAULT_MAX_IMAGE_PIXELS
V2_IMAGES_INPUT, V2_PIXELS_INPUT = images.V2_IMAGES_INPUT, images.V2_PIXELS_INPUT
V2_PROBABILITIES_OUTPUT, V2_LABELS_OUTPUT = images.V2_PROBABILITIES_OUTPUT, images.V2_LABELS_OUTPUT
V2_MAX_IMAGES = images.V2_MAX_IMAGES
decode_image, preprocess_image, request_to_tensor = images.decode_image, images.preprocess_image, images.request_to_tensor

logger = logging.getLogger(__name__)

KIND_IMAGE, KIND_TENSOR, KIND_TEXT = "image", "tensor", "text"
KINDS = (KIND_IMAGE, KIND_TENSOR, KIND_TEXT)


def read_model_dir(model_dir: Path) -> tuple[dict, dict[int, str]]:
    variant = json.loads((Path(model_dir) / backends.VARIANT_FILE).read_text())
    labels_path = Path(model_dir) / backends.LABELS_FILE
    labels = {}
    if labels_path.exists():
        labels = {int(k): v for k, v in json.loads(labels_path.read_text()).items()}
    return variant, labels


def model_inputs(variant: dict, labels: dict[int, str], model_dir: Path, max_image_pixels: int | None = None):
    """The kind's request reader and answer writer for this MAR."""
    kind = variant.get("kind", KIND_IMAGE)
    if kind == KIND_IMAGE:
        return images.ImageInputs(variant, labels, max_image_pixels)
    if kind == KIND_TENSOR:
        return tensors.TensorInputs(variant, labels)
    if kind == KIND_TEXT:
        return text.TextInputs(variant, labels, model_dir)
    raise ValueError(f"variant.json names kind {kind!r}, not one of {KINDS}")


class TiergateHandler:
    def __init__(self, max_image_pixels: int | None = None):
        self.max_image_pixels = max_image_pixels
        self.model: backends.LoadedModel | None = None
        self.inputs: Any = None
        self.variant: dict = {}
        self.model_name = ""
        self.model_version = ""

    @property
    def initialized(self) -> bool:
        return self.model is not None

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def kind(self) -> str:
        return self.variant.get("kind", KIND_IMAGE)

    def initialize(self, context, cuda_available: bool | None = None) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.variant, labels = read_model_dir(model_dir)
        self.inputs = model_inputs(self.variant, labels, model_dir, self.max_image_pixels)
        self.model_name = context.model_name
        self.model_version = ((context.manifest or {}).get("model") or {}).get("modelVersion", "")
        self.model = backends.load_model(
            model_dir, self.variant, cuda_available=cuda_available, gpu_id=properties.get("gpu_id")
        )
        # Warm up so compilation/profiling cost (and any load error) lands at
        # registration time instead of on the first client request.  Batch 1 and
        # batch 2 both: torch.compile specialises size 1 and compiles again for >1.
        for batch_size in sorted({1, min(2, self.model.max_batch_size)}):
            self.model.logits(self.inputs.example(batch_size))
        logger.info(
            "tiergate handler ready: model=%s kind=%s variant=%s backend=%s",
            self.model_name, self.kind, self.variant.get("variant"), self.backend,
        )

    def describe(self) -> dict:
        return {"backend": self.backend, "kind": self.kind, "variant": self.variant.get("variant")}

    def handle(self, data: list, context) -> list:
        responses: list[Any] = [None] * len(data)
        rows: list[torch.Tensor] = []
        row_owners: list[int] = []
        for idx, request in enumerate(data):
            try:
                rows.append(self.inputs.rows(request))
                row_owners.append(idx)
            except backends.InvalidInput as error:
                logger.info("request %d rejected: %s", idx, error)
                context.set_response_status(400, "Bad Request", idx)
                responses[idx] = backends.invalid_input_body(str(error))

        batch_size = 0
        if rows:
            batch = self.inputs.collate(rows)
            batch_size = len(batch)
            outputs = self.model.logits(batch)
            # A classifier answers probabilities; a regressor's or an embedding's outputs go out as computed.
            probabilities = outputs if self.variant.get("task") == "regressor" else outputs.softmax(dim=1)
            for idx, answer_rows in zip(row_owners, probabilities.split([len(row) for row in rows])):
                responses[idx] = self.inputs.answer(data[idx], answer_rows, self.model_name, self.model_version)

        for idx in range(len(data)):
            context.set_response_header(idx, backends.BACKEND_HEADER, self.backend)
            context.set_response_header(idx, backends.BATCH_SIZE_HEADER, str(batch_size))
            context.set_response_content_type(idx, "application/json")
        return responses


def is_describe(context) -> bool:
    """TorchServe marks the management API's customized describe with a request header."""
    return context is not None and context.get_request_header(0, "describe") == "True"


_service = TiergateHandler()


def handle(data, context):
    """TorchServe entry point; called with data=None once to initialize."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    if is_describe(context):
        return [json.dumps(_service.describe())]
    return _service.handle(data, context)
