"""A model's Triton model configuration (`GET /v2/models/{m}/config`), from its profile.

Triton's tools (Performance Analyzer, image_client.py, tritonclient's `get_model_config`)
read this before their first request: `max_batch_size` says whether the first dimension of
every shape in the model metadata is the batch, `optional` which inputs a request may leave
out. It is generated from the same declared inputs and outputs as the v2 model metadata, so
the two always agree: with a batch (`max_batch_size` > 0), metadata shape = [-1] + dims.
"""

from __future__ import annotations

from .profiles import Profile
from .profiles.base import TensorSchema

PLATFORM = "torchserve"  # as the v2 model metadata says


def model_config(name: str, profile: Profile) -> dict:
    tensors = [*profile.inputs, *profile.outputs]
    # Triton's batching: every tensor's first dimension is the batch, of any size up to the maximum.
    batched = all(schema.shape[0] == -1 for schema in tensors)
    # Inputs that are alternatives (a request carries exactly one) are each optional to Triton.
    optional = profile.one_input_of and len(profile.inputs) > 1
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "max_batch_size": profile.max_batch if batched else 0,
        "input": [
            {**_tensor(schema, batched), "format": f"FORMAT_{schema.layout}" if schema.layout else "FORMAT_NONE", "optional": optional}
            for schema in profile.inputs
        ],
        "output": [_tensor(schema, batched) for schema in profile.outputs],
    }


def _tensor(schema: TensorSchema, batched: bool) -> dict:
    """The fields Triton's ModelInput and ModelOutput share (the JSON of its protobuf)."""
    dims = list(schema.shape[1:] if batched else schema.shape)
    tensor = {
        "name": schema.name,
        "data_type": "TYPE_STRING" if schema.datatype == "BYTES" else f"TYPE_{schema.datatype}",
        "dims": dims or [1],
        "is_shape_tensor": False,
    }
    if not dims:  # one element per batch entry: Triton's way to say so is dims [1] reshaped to []
        tensor["reshape"] = {"shape": []}
    return tensor
