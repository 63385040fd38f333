"""tiergate model building: fp32 / int8 / gpu variants packed as TorchServe MARs.

Public API (also importable from the submodules named here):

    build_models, BuildResult        model.build
    choose_gpu_backend               model.gpu
    run_digits_check, DigitsSettings model.digits
    AgreementError                   model.agreement
"""

import importlib

_EXPORTS = {
    "build_models": "model.build",
    "BuildResult": "model.build",
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
