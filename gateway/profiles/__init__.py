"""Model profiles: everything the gateway knows about a kind of model, behind one interface.

The core (admission, coalescing, routing, pool client, metrics) treats bodies as bytes;
what a valid request looks like, how a model is described to Open Inference clients, which
canonical form identical requests share, and how two answers are compared in a shadow
test is the profile's business. `profile_for` picks the one a model's config names.
"""

from __future__ import annotations

from typing import Protocol

from ..config import ShadowCompare
from ..model_config import ModelConfig
from .base import Comparison, PoolBody, Tensor, TensorSchema


class Profile(Protocol):
    inputs: list[TensorSchema]  # as Open Inference model metadata declares them
    outputs: list[TensorSchema]
    max_batch: int  # rows (images, documents) one request may carry
    one_input_of: bool  # the inputs are alternatives (a request carries one), not all required

    def accept(self, content_type: str) -> str:
        """The TorchServe API request's media type, checked before its body is read (415 if wrong)."""
        ...

    def admit(self, body: bytes, content_type: str) -> PoolBody:
        """An accepted TorchServe API request body → what the pool is sent; a client mistake is a 4xx."""
        ...

    def from_v2(self, tensors: list[Tensor]) -> PoolBody:
        """An Open Inference request's decoded inputs → what the pool is sent."""
        ...

    def to_v2(self, answer: bytes) -> tuple[list[Tensor], str | None]:
        """The pool's answer to a `from_v2` body → the Open Inference outputs and the model version
        the pool says answered (None if it does not say); ValueError if malformed."""
        ...

    def compare(self, primary: bytes, other: bytes, settings: ShadowCompare) -> Comparison:
        """How another pool's answer differs from the primary's; ValueError when either is malformed."""
        ...

    def request_schema(self) -> dict:
        """The TorchServe API request body as an OpenAPI requestBody object."""
        ...

    def answer_schema(self) -> dict:
        """The TorchServe API answer as an OpenAPI response content object."""
        ...


def profile_for(model: ModelConfig) -> Profile:
    from .document import JsonProfile, PassthroughProfile
    from .image_classifier import ImageClassifierProfile
    from .tensor import TensorProfile

    kinds = {
        "image-classifier": ImageClassifierProfile,
        "tensor": TensorProfile,
        "json": JsonProfile,
        "passthrough": PassthroughProfile,
    }
    return kinds[model.profile](model)


__all__ = ["Comparison", "PoolBody", "Profile", "Tensor", "TensorSchema", "profile_for"]
