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
    build: str | None = Field(
        default=None, description="the recipe `tiergate build-models` makes this model's MARs with (model/recipes)"
    )
    mar: str | None = Field(
        default=None,
        description="a MAR every pool loads for this model, in artifacts_dir/model-store (e.g. one built elsewhere);"
        " absent: the built <name>-<pool variant>.mar",
    )

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
