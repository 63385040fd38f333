"""A torchvision classifier by name as a model source: calibrated and checked on the bundled
photos (model/photos.py), preprocessed exactly as the image handler serves them."""

from __future__ import annotations

import torch
import torchvision

from model import photos
from model.sources import BuildInputError, ModelData, ModelSource
from torchserve_backend import tiergate_images as images

SEED = 0
CALIBRATION_VIEWS = 2  # per photo: seeded random crops beside the whole photo
EVALUATION_VIEWS = 4


def torchvision_source(model: str, arch: str, weights: str | None) -> ModelSource:
    try:
        torch.manual_seed(SEED)
        module = torchvision.models.get_model(arch, weights=None)
    except Exception as error:
        raise BuildInputError(model, "load torchvision", f"{arch!r}: {type(error).__name__}: {error}") from error
    if weights is not None:
        try:
            module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as error:
            raise BuildInputError(model, "load weights", f"{weights}: {type(error).__name__}: {str(error)[:300]}") from error
    calibration_paths, evaluation_paths = photos.split_photos(photos.bundled_photo_paths())
    calibration = torch.stack(
        [images.preprocess_image(image) for image in photos.photo_views(calibration_paths, CALIBRATION_VIEWS, SEED)]
    )
    evaluation = torch.stack(
        [images.preprocess_image(image) for image in photos.photo_views(evaluation_paths, EVALUATION_VIEWS, SEED + 1)]
    )
    if weights is None:
        from model.build import recalibrate_batchnorm

        recalibrate_batchnorm(module, list(calibration.split(8)))
    described = weights or f"random weights (seed {SEED}), BatchNorm statistics from the calibration photos"
    return ModelSource(
        module.eval(),
        evaluation[:2],
        ModelData(
            list(calibration.split(8)), evaluation,
            description=f"{arch} ({described}) on the bundled photos: calibration and evaluation from disjoint photos",
        ),
        class_names=torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"],
    )
