"""Schemathesis against the gateway's own /openapi.json, in-process with decoding fake pools:
schema-valid and schema-violating requests to every operation of every bundled model (one of
each profile), with keys off and on.

Every response must conform to the document (status, content type, body schema, headers),
never be a 5xx, and schema-violating requests must be refused. One check is left out:
"positive data acceptance" treats any bytes as a valid `format: binary` body, while the
gateway rightly refuses bytes that are not an image (or a document its schema refuses).
"""

from __future__ import annotations

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from gateway.auth import digest

from .harness import EVERY_MODEL, Gateway

KEY = "fuzz-key"
OPEN, KEYED = Gateway(**EVERY_MODEL), Gateway(
    **EVERY_MODEL, auth={"keys": [{"name": "fuzz", "sha256": digest(KEY), "tiers": ["premium", "standard"]}]}
)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN.asgi)
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", KEYED.asgi)
for schema in (open_schema, keyed_schema):
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=25)
    rejection = schema.config.checks.negative_data_rejection  # 413 refuses too: e.g. a v2 shape of 10^8 images
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]


@open_schema.parametrize()
def test_gateway_conforms_to_its_openapi_document(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


@keyed_schema.parametrize()
def test_gateway_with_api_keys_conforms_to_its_openapi_document(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def test_document_describes_each_configured_model_and_the_tiers():
    document = OPEN.call("GET", "/openapi.json").json()
    for model in EVERY_MODEL["models"]:
        predict = document["paths"][f"/predictions/{model}"]["post"]
        parameters = {parameter["name"]: parameter for parameter in predict["parameters"]}
        assert parameters["X-SLA-Tier"]["schema"]["enum"] == ["batch", "premium", "standard"]
        assert "500" not in predict["responses"] and "security" not in predict
        assert f"/v2/models/{model}/infer" in document["paths"]
    paths = document["paths"]
    assert list(paths["/predictions/resnet18"]["post"]["requestBody"]["content"]) == ["image/jpeg", "image/png", "application/octet-stream", "multipart/form-data"]
    assert paths["/predictions/resnet18"]["put"] == paths["/predictions/resnet18"]["post"]
    assert "/v2/models/resnet18/config" in paths and "/ping" in paths
    assert paths["/predictions/sentiment"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == ["text"]
    digits = paths["/v2/models/digits/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert digits["properties"]["inputs"]["items"]["properties"]["name"]["enum"] == ["features"]
    keyed = KEYED.call("GET", "/openapi.json").json()
    assert keyed["paths"]["/predictions/digits"]["post"]["security"] == [{"apiKey": []}]
