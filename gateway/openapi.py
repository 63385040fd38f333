"""The gateway's HTTP surface as an OpenAPI 3 document, served at GET /openapi.json.

Written by hand rather than derived from code: the surface is small and this file is the
contract clients and schema-driven fuzzers (schemathesis, tests/fuzz) are held to. The
configured models and tiers are filled in, each model's paths with its profile's request
and answer, so generated requests reach real routes and every model is covered. Both APIs
are described: TorchServe's (/predictions) and the Open Inference Protocol's (/v2, JSON
form; gateway/v2.py), each with its own error shape.
"""

from __future__ import annotations

from typing import Any

from .config import GatewayConfig
from .model_config import VERSION as VERSION_PATTERN
from .profiles import profile_for
from .profiles.base import infer_request_schema, infer_response_schema

VERSION = f"^{VERSION_PATTERN.pattern}$"
# Every status a client fault can earn on an inference call, and what the gateway or a pool
# answers when it cannot serve one; 500 is deliberately absent.
PREDICT_ERRORS = {
    "400": "bad tier, a body the model's profile refuses (naming what is wrong), or refused by the model",
    "401": "API keys are in use and the request has no valid one",
    "403": "the API key may not use the claimed tier",
    "404": "no such model or model version",
    "405": "only POST or PUT is allowed",
    "413": "body over the model's max_body_bytes (refused before it is read), or more rows than it takes",
    "415": "a content type the model does not take",
    "422": "the model's handler failed on this input (TorchServe's 503 'Prediction failed')",
    "429": "shed to protect higher tiers; retry after Retry-After",
    "502": "the pool is down or failed the request",
    "503": "the pool is at capacity; retry after Retry-After",
    "504": "the tier's deadline passed",
}


def document(config: GatewayConfig, keys_required: bool) -> dict[str, Any]:
    profiles = {name: profile_for(model) for name, model in config.models.items()}
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
    # A model's paths admit callers as inference does: who asks, then which model.
    caller = {"401": _v2_error(PREDICT_ERRORS["401"])} if keys_required else {}
    v2_model = _v2_get("model metadata: its inputs and outputs", {"404": _v2_error("no such model or version"), **caller})
    v2_config = _v2_get(
        "Triton's model configuration: max_batch_size, and each input's data_type, dims and whether it is optional",
        {"404": _v2_error("no such model or version"), **caller},
    )
    v2_ready = _v2_get(
        "the model is ready when every pool serving it answers",
        {"404": _v2_error("no such model or version"), "503": _v2_error("not ready, and why"), **caller},
    )
    for operation in (v2_model, v2_config, v2_ready):
        operation["get"].update(security)
    paths: dict[str, Any] = {}
    for name, profile in profiles.items():
        model = config.models[name]
        predict = {
            "summary": f"{name} ({model.profile}), served by the pool the SLA tier maps to",
            "parameters": inference_headers,
            "requestBody": _with_form(profile.request_schema(), config.body_limit(name)),
            "responses": {
                "200": {
                    "description": "the model's answer",
                    "headers": {
                        header: {"schema": {"type": "string"}}
                        for header in ("X-Tiergate-Tier", "X-Tiergate-Pool", "X-Tiergate-Backend", "X-Request-ID")
                    },
                    "content": profile.answer_schema(),
                },
                **{status: _error(why) for status, why in PREDICT_ERRORS.items()},
            },
            **security,
        }
        infer = {
            "summary": f"Open Inference Protocol inference on {name}: inputs "
            + ", ".join(f"`{schema.name}` ({schema.datatype} {list(schema.shape)})" for schema in profile.inputs)
            + (" (one of them)" if profile.one_input_of and len(profile.inputs) > 1 else ""),
            "parameters": inference_headers,
            "requestBody": {"required": True, "content": {"application/json": {"schema": infer_request_schema(profile)}}},
            "responses": {
                "200": {
                    "description": "the requested outputs (binary tensor data when an output asks for it)",
                    "content": {
                        "application/json": {"schema": infer_response_schema(profile)},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **{status: _v2_error(why) for status, why in PREDICT_ERRORS.items()},
            },
            **security,
        }
        paths.update({
            f"/predictions/{name}": {"post": predict, "put": predict},
            f"/predictions/{name}/{{version}}": {
                method: {**predict, "parameters": [*inference_headers, version]} for method in ("post", "put")
            },
            f"/v2/models/{name}": v2_model,
            f"/v2/models/{name}/config": v2_config,
            f"/v2/models/{name}/ready": v2_ready,
            f"/v2/models/{name}/infer": {"post": infer},
            f"/v2/models/{name}/versions/{{version}}": {"parameters": [version], **v2_model},
            f"/v2/models/{name}/versions/{{version}}/ready": {"parameters": [version], **v2_ready},
            f"/v2/models/{name}/versions/{{version}}/config": {"parameters": [version], **v2_config},
            f"/v2/models/{name}/versions/{{version}}/infer": {"post": {**infer, "parameters": [*inference_headers, version]}},
        })
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tiergate",
            "version": "1",
            "description": "SLA-tier inference gateway; TorchServe's inference API and the Open Inference Protocol, tiers chosen by header",
        },
        "paths": {
            **paths,
            "/v2": _v2_get("server metadata", {}),
            "/v2/health/live": _v2_get("the gateway process is alive", {}),
            "/v2/health/ready": _v2_get("every serving pool answers", {"503": _v2_error("not ready, and why")}),
            "/healthz": {"get": _get("the gateway process is alive", _json_object())},
            "/ping": {
                "get": {
                    "summary": "TorchServe's health check: Healthy when every serving pool answers",
                    "responses": {
                        "200": {"description": "Healthy", "content": {"application/json": {"schema": _status()}}},
                        "500": {"description": "Unhealthy (TorchServe's status)", "content": {"application/json": {"schema": _status()}}},
                        "405": _error("only GET is allowed"),
                    },
                }
            },
            "/api-description": {"get": _get("this document (TorchServe's API description)", _json_object())},
            "/": {"options": {**_get("this document (TorchServe's OPTIONS /)", _json_object()), "responses": {
                "200": {"description": "this document", "content": {"application/json": {"schema": _json_object()}}},
                "405": _error("only OPTIONS is allowed"),
            }}},
            "/readyz": {
                "get": {
                    "summary": "200 when every serving pool answers TorchServe's ping; per model, whether its pools do",
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


def _with_form(body: dict[str, Any], limit: int) -> dict[str, Any]:
    """A model's request body, also as TorchServe's form upload: its `data` field (gateway/multipart.py)."""
    form = {"schema": {
        "type": "object", "required": ["data"],
        "properties": {"data": {"type": "string", "format": "binary", "description": "the body the model takes raw"}},
    }}
    return {**body, "description": f"at most {limit} bytes", "content": {**body["content"], "multipart/form-data": form}}


def _status() -> dict[str, Any]:
    return {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["Healthy", "Unhealthy"]}}}


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
