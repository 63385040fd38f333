"""The gateway's HTTP surface as an OpenAPI 3 document, served at GET /openapi.json.

Written by hand rather than derived from code: the surface is small and this file is the
contract clients and schema-driven fuzzers (schemathesis, tests/fuzz) are held to. The
configured model and tier names are filled in, so generated requests reach real routes.
Both APIs are described: TorchServe's (/predictions) and the Open Inference Protocol's
(/v2, JSON form; gateway/v2.py), each with its own error shape.
"""

from __future__ import annotations

from typing import Any

from .admit import VERSION as VERSION_PATTERN
from .config import GatewayConfig
from .v2 import MAX_IMAGES as V2_MAX_IMAGES

IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
VERSION = f"^{VERSION_PATTERN.pattern}$"
# Every status a client fault can earn on an inference call, and what the gateway or a pool
# answers when it cannot serve one; 500 is deliberately absent.
PREDICT_ERRORS = {
    "400": "bad tier, empty or non-image body, image over the pixel limit, or refused by the model",
    "401": "API keys are in use and the request has no valid one",
    "403": "the API key may not use the claimed tier",
    "404": "no such model or model version",
    "405": "only POST is allowed",
    "413": "body over max_body_bytes, refused before it is read",
    "415": "not an image content type",
    "429": "shed to protect higher tiers; retry after Retry-After",
    "502": "the pool is down or failed the request",
    "503": "the pool is at capacity; retry after Retry-After",
    "504": "the tier's deadline passed",
}


def document(config: GatewayConfig, keys_required: bool) -> dict[str, Any]:
    model = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "enum": list(config.models)}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": VERSION}}
    inference_headers = [
        {
            "name": config.tier_header, "in": "header", "required": False,
            "description": f"SLA tier (default {config.default_tier!r}, or the API key's default)",
            "schema": {"type": "string", "enum": sorted(config.tiers)},
        },
        {
            "name": "X-Request-ID", "in": "header", "required": False,
            "description": "echoed back when it is 1-128 of A-Z a-z 0-9 . _ : - (a fresh id replaces anything else)",
            "schema": {"type": "string"},
        },
    ]
    security = {"security": [{"apiKey": []}]} if keys_required else {}
    predict = {
        "summary": "Top-5 classes of one image, served by the pool the SLA tier maps to",
        "parameters": [model, *inference_headers],
        "requestBody": {
            "required": True,
            "description": f"the raw JPEG or PNG bytes, at most {config.max_body_bytes} bytes",
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
        },
        "responses": {
            "200": {
                "description": "class label → probability, most likely first",
                "headers": {
                    name: {"schema": {"type": "string"}}
                    for name in ("X-Tiergate-Tier", "X-Tiergate-Pool", "X-Tiergate-Backend", "X-Request-ID")
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TopK"}}},
            },
            **{status: _error(why) for status, why in PREDICT_ERRORS.items()},
        },
        **security,
    }
    infer = {
        "summary": "Open Inference Protocol inference: input `images` (BYTES [N]) or `pixels` (FP32 [N,3,224,224])",
        "parameters": [model, *inference_headers],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
        },
        "responses": {
            "200": {
                "description": "the requested outputs (binary tensor data when an output asks for it)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **{status: _v2_error(why) for status, why in PREDICT_ERRORS.items() if status != "413"},
            "413": _v2_error(f"body over max_body_bytes, or more than {V2_MAX_IMAGES} images"),
        },
        **security,
    }
    v2_model = _v2_get("model metadata: its inputs and outputs", {"404": _v2_error("no such model or version")})
    v2_ready = _v2_get(
        "the model is ready when every pool serving it answers",
        {"404": _v2_error("no such model or version"), "503": _v2_error("not ready, and why")},
    )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tiergate",
            "version": "1",
            "description": "SLA-tier inference gateway; TorchServe's inference API with tiers chosen by header",
        },
        "paths": {
            "/predictions/{model}": {"post": predict},
            "/predictions/{model}/{version}": {"post": {**predict, "parameters": [*predict["parameters"], version]}},
            "/v2": _v2_get("server metadata", {}),
            "/v2/health/live": _v2_get("the gateway process is alive", {}),
            "/v2/health/ready": _v2_get("every serving pool answers", {"503": _v2_error("not ready, and why")}),
            "/v2/models/{model}": {"parameters": [model], **v2_model},
            "/v2/models/{model}/ready": {"parameters": [model], **v2_ready},
            "/v2/models/{model}/infer": {"post": infer},
            "/v2/models/{model}/versions/{version}": {"parameters": [model, version], **v2_model},
            "/v2/models/{model}/versions/{version}/ready": {"parameters": [model, version], **v2_ready},
            "/v2/models/{model}/versions/{version}/infer": {
                "post": {**infer, "parameters": [*infer["parameters"], version]}
            },
            "/healthz": {"get": _get("the gateway process is alive", _json_object())},
            "/readyz": {
                "get": {
                    "summary": "200 when every serving pool answers TorchServe's ping",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": _json_object()}}},
                        "503": {
                            "description": "the pools that do not answer, and why",
                            "content": {"application/json": {"schema": _json_object()}},
                        },
                        "405": _error("only GET is allowed"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus exposition: the gateway's series and each pool's, labelled by pool",
                    "responses": {
                        "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "405": _error("only GET is allowed"),
                    },
                }
            },
            "/openapi.json": {"get": _get("this document", _json_object())},
        },
        "components": {
            "schemas": {
                "TopK": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
                "Error": {
                    "type": "object",
                    "required": ["code", "type", "message"],
                    "properties": {
                        "code": {"type": "integer", "description": "the HTTP status"},
                        "type": {"type": "string", "description": "stable machine-readable name"},
                        "message": {"type": "string", "description": "for humans; never echoes the payload"},
                    },
                },
                "V2Error": {
                    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string", "description": "echoed in the response"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"$ref": "#/components/schemas/InferInput"}},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "enum": ["top5_probabilities", "top5_labels"]},
                                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                                },
                            },
                        },
                    },
                },
                "InferInput": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string", "enum": ["images", "pixels"]},
                        "shape": {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                        "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
                        "data": {"type": "array", "description": "base64 JPEG/PNG strings, or numbers"},
                        "parameters": {"type": "object"},
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "datatype", "shape"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "datatype": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "data": {"type": "array"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
            },
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _v2_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}},
    }


def _v2_get(summary: str, errors: dict[str, Any]) -> dict[str, Any]:
    ok = {"description": summary, "content": {"application/json": {"schema": _json_object()}}}
    return {"get": {"summary": summary, "responses": {"200": ok, "405": _v2_error("only GET is allowed"), **errors}}}


def _json_object() -> dict[str, Any]:
    return {"type": "object"}


def _get(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            "200": {"description": summary, "content": {"application/json": {"schema": schema}}},
            "405": _error("only GET is allowed"),
        },
    }
