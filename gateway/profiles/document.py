"""Profiles of models whose requests are one document: `json` (any JSON, optionally checked
against a JSON Schema) and `passthrough` (opaque bytes for a handler the gateway does not know).

On the Open Inference API such a model takes one input, `body` (BYTES [1]: the document; a
JSON document as a string, opaque bytes base64-encoded in JSON or raw as binary data), and
answers one output, `body` (BYTES [1]: the pool's answer as text).
"""

from __future__ import annotations

import base64

import orjson

from ..config import ShadowCompare
from ..errors import GatewayError, bad_request
from ..model_config import JsonModel, PassthroughModel
from ..v2_codec import JSON_CONTENT_TYPES
from .base import Comparison, PoolBody, Tensor, TensorSchema
from .numeric import compare_numbers, flatten

BODY = "body"


class _Document:
    inputs = [TensorSchema(BODY, "BYTES", (1,))]
    outputs = [TensorSchema(BODY, "BYTES", (1,))]
    max_batch = 1
    one_input_of = True

    def from_v2(self, tensors: list[Tensor]) -> PoolBody:
        if len(tensors) != 1 or tensors[0].name != BODY:
            raise bad_request(f"this model takes one input, {BODY!r} (BYTES [1]): the request document")
        [tensor] = tensors
        self.inputs[0].check(tensor, self.max_batch)
        return self._admit_element(tensor.data[0])

    def to_v2(self, answer: bytes) -> tuple[list[Tensor], str | None]:
        return [Tensor(BODY, "BYTES", (1,), [answer.decode("utf-8", "replace")])], None


class JsonProfile(_Document):
    def __init__(self, model: JsonModel) -> None:
        self._validator = None
        if model.json_schema is not None:
            import jsonschema

            self._validator = jsonschema.validators.validator_for(model.json_schema)(model.json_schema)
        self.json_schema = model.json_schema

    def accept(self, content_type: str) -> str:
        if content_type not in JSON_CONTENT_TYPES:
            raise GatewayError(415, "UnsupportedMediaType", "send a JSON document (application/json)")
        return content_type

    def admit(self, body: bytes, content_type: str) -> PoolBody:
        return self._canonical(body)

    def _admit_element(self, element: str | bytes) -> PoolBody:
        return self._canonical(element.encode() if isinstance(element, str) else element)

    def _canonical(self, body: bytes) -> PoolBody:
        """Validated, then re-serialized with sorted keys and no whitespace: documents that
        differ only in key order or spacing are one request to coalesce and cache."""
        if not body:
            raise bad_request("empty body: send a JSON document")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise bad_request("the body is not valid JSON") from None
        if self._validator is not None:
            error = next(iter(sorted(self._validator.iter_errors(document), key=lambda e: list(e.absolute_path))), None)
            if error is not None:
                where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
                # The schema's words, not jsonschema's message: that one quotes the payload.
                rule = _bounded(repr(error.validator_value))
                raise bad_request(f"the document does not match the model's schema at ${where}: fails {error.validator!r} ({rule})")
        return PoolBody(orjson.dumps(document, option=orjson.OPT_SORT_KEYS), "application/json")

    def compare(self, primary: bytes, other: bytes, settings: ShadowCompare) -> Comparison:
        return compare_numbers(flatten(orjson.loads(primary)), flatten(orjson.loads(other)), settings, check_cosine=False)

    def request_schema(self) -> dict:
        return {"required": True, "content": {"application/json": {"schema": self.json_schema or {}}}}

    def answer_schema(self) -> dict:
        return {"application/json": {"schema": {}}}


class PassthroughProfile(_Document):
    def __init__(self, model: PassthroughModel) -> None:
        self.content_types = frozenset(model.content_types)
        self._v2_content_type = model.content_types[0]

    def accept(self, content_type: str) -> str:
        if content_type not in self.content_types:
            raise GatewayError(
                415, "UnsupportedMediaType", f"this model takes {', '.join(sorted(self.content_types))}"
            )
        return content_type

    def admit(self, body: bytes, content_type: str) -> PoolBody:
        if not body:
            raise bad_request("empty body")
        return PoolBody(body, content_type)

    def _admit_element(self, element: str | bytes) -> PoolBody:
        if isinstance(element, str):  # JSON BYTES carry opaque bytes base64-encoded
            try:
                element = base64.b64decode(element, validate=True)
            except ValueError:
                raise bad_request(f"{BODY}[0] is not a base64 string (JSON BYTES carry opaque bytes base64-encoded)") from None
        if not element:
            raise bad_request(f"{BODY}[0] is empty")
        return PoolBody(element, self._v2_content_type)

    def compare(self, primary: bytes, other: bytes, settings: ShadowCompare) -> Comparison:
        same = primary == other
        return Comparison(top1_same=same, overlap=1.0 if same else 0.0, max_delta=0.0, tolerance=0.0)

    def request_schema(self) -> dict:
        binary = {"schema": {"type": "string", "format": "binary"}}
        return {"required": True, "content": {media: binary for media in sorted(self.content_types)}}

    def answer_schema(self) -> dict:
        return {"*/*": {"schema": {}}}


def _bounded(message: str, limit: int = 200) -> str:
    """A schema value, bounded: a large enum must not flood a reply."""
    return message if len(message) <= limit else message[:limit] + "…"
