"""How a model is declared in the gateway config: its profile and what that profile needs
(tensors, a JSON Schema, content types), its limits, coalescing, cache and MARs.
Part of the one typed config (gateway/config.py), kept apart so each file stays readable."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# What a model version may be called: never "..", "/" or a query (it goes into a pool's URL).
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_VERSION = "1.0"  # what model/ archives every MAR as


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheConfig(Strict):
    """A per-model response cache keyed by content hash (off unless configured)."""

    ttl_s: float = Field(default=60.0, gt=0)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)


DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")


class TensorSpec(Strict):
    """One named tensor of a model's input or output, as the Open Inference Protocol declares it."""

    name: str = Field(pattern=NAME.pattern)
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    shape: list[int] = Field(
        min_length=1, description="the first dimension is the batch (-1: any count); -1 elsewhere: any size"
    )

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if any(dim < -1 or dim == 0 for dim in shape):
            raise ValueError(f"dimensions are positive or -1 (any), got {shape}")
        return shape


class QualityGates(Strict):
    """What the int8 and gpu variants must reach against fp32 on the evaluation data, or the build
    fails naming the model and the figure. Classifiers are judged by top-1 agreement (and accuracy
    where the data has labels), regressors and embeddings by error and cosine similarity."""

    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    min_accuracy: float | None = Field(default=None, ge=0, le=1, description="fp32 and int8 top-1 accuracy")
    max_abs_error: float | None = Field(default=None, ge=0)
    max_rel_error: float | None = Field(default=None, ge=0, description="‖int8 − fp32‖ / ‖fp32‖ over the data")
    min_cosine: float | None = Field(default=None, ge=-1, le=1)


CLASSIFIER_GATES = QualityGates(min_top1_agreement=0.97)
REGRESSOR_GATES = QualityGates(min_cosine=0.99)
# How each profile's requests reach the model (the handler's kinds, torchserve_backend/handler.py).
PROFILE_KINDS = {"image-classifier": "image", "tensor": "tensor", "json": "text"}


class BuildConfig(Strict):
    """A model source and what to make of it (model/byo.py builds it). Exactly one source:
    `factory` (package.module:function returning the nn.Module and example inputs), `program`
    (a torch.export.save file) or `torchvision` (a classifier by name, `weights` for real ones)."""

    factory: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    program: str | None = Field(default=None, description="an ExportedProgram file (.pt2), relative to the working directory")
    torchvision: str | None = Field(default=None, description="a torchvision classifier, e.g. resnet50")
    weights: str | None = Field(default=None, description="a state_dict file for `torchvision` (default: random weights)")
    data: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="package.module:function returning calibration and evaluation data (model/byo.py ModelData)",
    )
    quantize: Literal["static", "dynamic", "none"] | None = Field(
        default=None, description="int8 for the CPU pool: static (calibrated; convolutional models), dynamic"
        " (Linear-heavy models), none; default: static when the model has convolutions, else dynamic",
    )
    task: Literal["classifier", "regressor"] = "classifier"
    gates: QualityGates | None = Field(default=None, description="default: top-1 agreement 0.97 (classifier), cosine 0.99 (regressor)")
    max_batch_size: int = Field(default=32, ge=2, description="the largest batch the exported programs take")
    pool_batch_size: int = Field(default=8, ge=1, description="the CPU pool's batch: int8 must be faster at it to be served")
    # Filled from the model's declaration (never written in YAML, never dumped: parsing the dump
    # derives them again): how requests reach the model.
    kind: Literal["image", "tensor", "text"] | None = Field(default=None, exclude=True)
    inputs: list[TensorSpec] | None = Field(default=None, exclude=True)
    outputs: list[TensorSpec] | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _one_source(self) -> BuildConfig:
        sources = [key for key in ("factory", "program", "torchvision") if getattr(self, key) is not None]
        if len(sources) != 1:
            raise ValueError(f"build names exactly one of factory, program, torchvision; got {sources or 'none'}")
        if self.weights is not None and self.torchvision is None:
            raise ValueError("weights go with a torchvision classifier; a factory loads its own")
        if self.data is not None and self.torchvision is not None:
            raise ValueError("a torchvision classifier is calibrated and checked on the bundled photos; drop data")
        return self

    @property
    def source(self) -> str:
        """What the build reads, for messages: 'factory pkg.mod:fn' and the like."""
        for key in ("factory", "program", "torchvision"):
            if getattr(self, key) is not None:
                return f"{key} {getattr(self, key)}"
        raise AssertionError("validated: one source")

    @property
    def quality_gates(self) -> QualityGates:
        return self.gates or (CLASSIFIER_GATES if self.task == "classifier" else REGRESSOR_GATES)


def _build_serves_profile(data: Any) -> Any:
    """Give a `build:` mapping the kind (and tensors) its model's profile serves, so the build
    writes MARs the handler reads the way the gateway sends requests."""
    if not isinstance(data, dict) or not isinstance(data.get("build"), dict):
        return data
    profile = data.get("profile")
    if profile not in PROFILE_KINDS:
        raise ValueError(f"a built model's profile is one of {sorted(PROFILE_KINDS)}; {profile!r} brings its own MAR")
    build = {**data["build"], "kind": PROFILE_KINDS[profile]}
    if profile == "tensor":
        build.update(inputs=data.get("inputs"), outputs=data.get("outputs"))
    return {**data, "build": build}


class _Model(Strict):
    """What every model shares, whatever its profile."""

    version: str = Field(
        default=DEFAULT_VERSION, pattern=f"^{VERSION.pattern}$",
        description="the version the model's MAR declares, which the pools register it under (TorchServe"
        " matches the exact string: 1 is not 1.0); the one version both APIs list and accept",
    )
    max_body_bytes: int | None = Field(default=None, ge=1, description="this model's body limit (default: the gateway's)")
    coalesce: bool = Field(default=True, description="identical concurrent requests share one pool call (with the gateway's `coalesce`)")
    cache: CacheConfig | None = Field(default=None, description="a response cache for this model (off if absent)")
    build: str | BuildConfig | None = Field(
        default=None,
        description="how `tiergate build-models` makes this model's MARs: a recipe's name (model/recipes), or a"
        " model source (factory, exported program or torchvision classifier) with its quantization and gates",
    )
    mar: str | None = Field(
        default=None,
        description="a MAR every pool loads for this model, in artifacts_dir/model-store (e.g. one built elsewhere);"
        " absent: the built <name>-<pool variant>.mar",
    )

    @model_validator(mode="before")
    @classmethod
    def _build_kind(cls, data: Any) -> Any:
        return _build_serves_profile(data)

    @field_validator("mar")
    @classmethod
    def _mar_file(cls, value: str | None) -> str | None:
        if value is not None and (not value.endswith(".mar") or "/" in value or value.startswith(".")):
            raise ValueError(f"mar is a file name in the model store ending in .mar, got {value!r}")
        return value


class ImageClassifierModel(_Model):
    """JPEG/PNG in, top-5 classes out: tiergate's own handler (model/ builds it)."""

    profile: Literal["image-classifier"]


class TensorModel(_Model):
    """Named tensors in and out, declared here; v2 tensors (JSON or binary), or the same JSON on
    the TorchServe API."""

    profile: Literal["tensor"]
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    max_batch: int = Field(default=64, ge=1, description="rows one request may carry")

    @model_validator(mode="after")
    def _unique_names(self) -> TensorModel:
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} name a tensor twice: {names}")
        return self


class JsonModel(_Model):
    """Any JSON document in (optionally checked against a JSON Schema), JSON out."""

    profile: Literal["json"]
    json_schema: dict[str, Any] | None = Field(default=None, description="a JSON Schema every request must satisfy")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
        return schema


class PassthroughModel(_Model):
    """Opaque bytes for a MAR whose handler the gateway knows nothing about."""

    profile: Literal["passthrough"]
    content_types: list[str] = Field(
        default_factory=lambda: ["application/octet-stream"], min_length=1,
        description="the request content types forwarded (others get 415)",
    )

    @field_validator("content_types")
    @classmethod
    def _media_types(cls, types: list[str]) -> list[str]:
        for media_type in types:
            if not re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+*-]+", media_type):
                raise ValueError(f"content type {media_type!r} is not a lower-case media type like image/jpeg")
        return types


ModelConfig = Annotated[
    Union[ImageClassifierModel, TensorModel, JsonModel, PassthroughModel], Field(discriminator="profile")
]
