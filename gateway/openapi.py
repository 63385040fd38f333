"""The gateway's HTTP surface as an OpenAPI 3 document, served at GET /openapi.json.

Written by hand rather than derived from code: the surface is small and this file is the
contract clients and schema-driven fuzzers (schemathesis, tests/fuzz) are held to. The
configured model and tier names are filled in, so generated requests reach real routes.
"""

from __future__ import annotations

from typing import Any

from .config import GatewayConfig

IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
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
    predict = {
        "summary": "Top-5 classes of one image, served by the pool the SLA tier maps to",
        "parameters": [
            {
                "name": "model", "in": "path", "required": True,
                "schema": {"type": "string", "enum": list(config.models)},
            },
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
        ],
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
    }
    if keys_required:
        predict["security"] = [{"apiKey": []}]
    versioned = {
        **predict,
        "parameters": predict["parameters"] + [
            {
                "name": "version", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
            }
        ],
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tiergate",
            "version": "1",
            "description": "SLA-tier inference gateway; TorchServe's inference API with tiers chosen by header",
        },
        "paths": {
            "/predictions/{model}": {"post": predict},
            "/predictions/{model}/{version}": {"post": versioned},
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
            },
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


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
