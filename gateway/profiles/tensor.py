"""`tensor`: named tensors in and out, as the model's config declares them.

Open Inference requests (JSON or binary tensor data) and TorchServe API requests (the same
request as JSON) are checked against the declared inputs (names, datatypes, shapes, one batch
size for all) and forwarded in one canonical form: every declared input in declared order,
its data flat JSON. The pool answers Open Inference outputs (`{"outputs": [...]}`).
"""

from __future__ import annotations

import orjson

from ..config import ShadowCompare
from ..errors import GatewayError, bad_request
from ..model_config import TensorModel
from ..v2_codec import JSON_CONTENT_TYPES, parse_infer_request, tensors_from_answer
from .base import (
    Comparison,
    PoolBody,
    RowCountMismatch,
    Tensor,
    TensorSchema,
    infer_request_schema,
    infer_response_schema,
)
from .numeric import compare_numbers


class TensorProfile:
    one_input_of = False

    def __init__(self, model: TensorModel) -> None:
        self.inputs = [TensorSchema(spec.name, spec.datatype, tuple(spec.shape)) for spec in model.inputs]
        self.outputs = [TensorSchema(spec.name, spec.datatype, tuple(spec.shape)) for spec in model.outputs]
        self.max_batch = model.max_batch

    def accept(self, content_type: str) -> str:
        if content_type not in JSON_CONTENT_TYPES:
            raise GatewayError(
                415, "UnsupportedMediaType", 'send an Open Inference request as JSON: {"inputs": [...]}'
            )
        return content_type

    def admit(self, body: bytes, content_type: str) -> PoolBody:
        return self.from_v2(parse_infer_request(body, None).inputs)

    def from_v2(self, tensors: list[Tensor]) -> PoolBody:
        given = {tensor.name: tensor for tensor in tensors}
        expected = [schema.name for schema in self.inputs]
        if set(given) != set(expected):
            raise bad_request(f"this model takes the inputs {expected}, not {sorted(given)}")
        rows = {tensor.shape[0] for tensor in tensors}
        for schema in self.inputs:
            schema.check(given[schema.name], self.max_batch)
        if len(rows) != 1:
            raise bad_request(f"every input must carry the same number of rows, not {sorted(rows)}")
        canonical = [
            {"name": schema.name, "datatype": schema.datatype, "shape": list(given[schema.name].shape),
             "data": given[schema.name].flat_json()}
            for schema in self.inputs
        ]
        return PoolBody(orjson.dumps({"inputs": canonical}), "application/json")

    def to_v2(self, answer: bytes) -> tuple[list[Tensor], str | None]:
        tensors, version = tensors_from_answer(orjson.loads(answer))
        produced = {tensor.name: tensor for tensor in tensors}
        missing = [schema.name for schema in self.outputs if schema.name not in produced]
        if missing:
            raise ValueError(f"the pool's answer lacks the outputs {missing}")
        return [produced[schema.name] for schema in self.outputs], version

    def compare(self, primary: bytes, other: bytes, settings: ShadowCompare) -> Comparison:
        (mine, _), (theirs, _) = self.to_v2(primary), self.to_v2(other)
        if [tensor.shape for tensor in mine] != [tensor.shape for tensor in theirs]:
            raise RowCountMismatch("the answers' output shapes differ")
        return compare_numbers(_leaves(mine), _leaves(theirs), settings, check_cosine=True)

    def request_schema(self) -> dict:
        return {"required": True, "content": {"application/json": {"schema": infer_request_schema(self)}}}

    def answer_schema(self) -> dict:
        return {"application/json": {"schema": infer_response_schema(self)}}


def _leaves(tensors: list[Tensor]) -> dict:
    return {f"{tensor.name}[{index}]": value for tensor in tensors for index, value in enumerate(tensor.flat_json())}
