"""Schemathesis against the gateway's own /openapi.json, in-process with decoding fake pools:
schema-valid and schema-violating requests to every operation, with keys off and on.

Every response must conform to the document (status, content type, body schema, headers),
never be a 5xx, and schema-violating requests must be refused. One check is left out:
"positive data acceptance" treats any bytes as a valid `format: binary` body, while the
gateway rightly refuses bytes that are not an image.
"""

from __future__ import annotations

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from gateway.auth import digest

from .harness import Gateway

KEY = "fuzz-key"
OPEN, KEYED = Gateway(), Gateway(
    auth={"keys": [{"name": "fuzz", "sha256": digest(KEY), "tiers": ["premium", "standard"]}]}
)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN.asgi)
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", KEYED.asgi)
for schema in (open_schema, keyed_schema):
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=50)
    rejection = schema.config.checks.negative_data_rejection  # 413 refuses too: e.g. a v2 shape of 10^8 images
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]


@open_schema.parametrize()
def test_gateway_conforms_to_its_openapi_document(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


@keyed_schema.parametrize()
def test_gateway_with_api_keys_conforms_to_its_openapi_document(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def test_document_names_the_configured_models_and_tiers():
    document = OPEN.call("GET", "/openapi.json").json()
    predict = document["paths"]["/predictions/{model}"]["post"]
    parameters = {parameter["name"]: parameter for parameter in predict["parameters"]}
    assert parameters["model"]["schema"]["enum"] == ["resnet18"]
    assert parameters["X-SLA-Tier"]["schema"]["enum"] == ["batch", "premium", "standard"]
    assert "500" not in predict["responses"]
    assert "security" not in predict
    keyed = KEYED.call("GET", "/openapi.json").json()
    assert keyed["paths"]["/predictions/{model}"]["post"]["security"] == [{"apiKey": []}]
