"""tiergate model building: each model's MARs, built by the recipe or model source its config names.

Public API (also importable from the submodules named here):

    build_model, RECIPES             model.recipes
    ModelSource, ModelData           model.sources (what a factory returns)
    BuildResult                      model.artifacts
    build_models                     model.build (the resnet recipes)
    choose_gpu_backend               model.gpu
    run_digits_check, DigitsSettings model.digits
    AgreementError                   model.agreement
"""

import importlib

_EXPORTS = {
    "build_model": "model.recipes",
    "RECIPES": "model.recipes",
    "ModelSource": "model.sources",
    "ModelData": "model.sources",
    "BuildResult": "model.artifacts",
    "build_models": "model.build",
    "choose_gpu_backend": "model.gpu",
    "run_digits_check": "model.digits",
    "DigitsSettings": "model.digits",
    "AgreementError": "model.agreement",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # Imported lazily so `python -m model.build` does not import model.build twice.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
