"""Open Inference Protocol v2 tensors to NumPy arrays and back, for ``kserve_v2``.

A v2 tensor is a name, a ``datatype`` ("FP32", "BYTES", ...), a shape and its
values, either in ``raw_input_contents``/``raw_output_contents`` (row-major
little-endian bytes, what Triton's clients send: one ``np.frombuffer``, one
``tobytes`` back) or in the typed ``InferTensorContents`` field of its datatype
(what JSON callers send: one NumPy conversion per tensor). BYTES elements in raw
form carry a 4-byte little-endian length each, which is also tensorgate's own
raw layout for strings. The datatypes and the decoding rules are the codec
core's (``tensorgate.v1.tensors``); this module maps them onto the v2 messages.
Malformed tensors raise ``TensorCodecError``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tensorgate.compat.kserve_v2.grpc_service_pb2 import InferTensorContents, ModelInferRequest, ModelInferResponse
from tensorgate.server.errors import quote
from tensorgate.v1 import tensors
from tensorgate.v1.tensors import TensorCodecError

# The InferTensorContents field of each dtype; FP16 has none: its values travel only as raw contents.
_CONTENTS = {
    "float32": "fp32_contents",
    "float64": "fp64_contents",
    "int8": "int_contents",
    "int16": "int_contents",
    "int32": "int_contents",
    "int64": "int64_contents",
    "uint8": "uint_contents",
    "uint16": "uint_contents",
    "uint32": "uint_contents",
    "uint64": "uint64_contents",
    "bool": "bool_contents",
    "string": "bytes_contents",
}
_CONTENTS_FIELDS = tuple(field.name for field in InferTensorContents.DESCRIPTOR.fields)


def datatype_of(data_type: int) -> str:
    """The v2 datatype of a ``tensorgate.v1.DataType`` (for model metadata)."""
    return tensors.BY_V1[data_type].v2


def decode_inputs(request: ModelInferRequest) -> tuple[dict[str, np.ndarray], bool]:
    """The request's inputs by name, and whether they came as raw contents (then outputs go back raw too)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorCodecError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise TensorCodecError(f"input {quote(tensor.name)} is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise TensorCodecError(f"input {quote(tensor.name)}: shared-memory inputs are not supported; send contents")
        inputs[tensor.name] = decode_input(tensor, raw[index] if raw else None)
    return inputs, bool(raw)


def decode_input(tensor: ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """One input as an array of its datatype and shape, from ``raw`` bytes or else its typed contents."""
    name = f"input {quote(tensor.name)}"
    dtype = tensors.BY_V2.get(tensor.datatype)
    if dtype is None:
        raise TensorCodecError(
            f"{name}: datatype {quote(tensor.datatype)} is not supported; use one of {sorted(tensors.BY_V2)}"
        )
    shape = tensors.checked_shape(tensor.shape, name)
    if raw is not None:
        if tensor.HasField("contents"):
            raise TensorCodecError(f"{name}: contents and raw_input_contents are both set; use one")
        return tensors.from_raw(raw, dtype, shape, name, "raw_input_contents")
    field = _CONTENTS.get(dtype.name)
    if field is None:
        raise TensorCodecError(f"{name}: {dtype.v2} values travel only in raw_input_contents")
    used = [used for used in _CONTENTS_FIELDS if len(getattr(tensor.contents, used))]
    if used and used != [field]:
        raise TensorCodecError(f"{name}: {dtype.v2} takes its values in contents.{field}, not {used}")
    return tensors.from_typed(tensor.contents, field, dtype, shape, name)


def encode_outputs(response: ModelInferResponse, outputs: Mapping[str, np.ndarray], raw: bool) -> None:
    """Add ``outputs`` to ``response``: as raw_output_contents when ``raw`` (or when an output is FP16, which has
    no typed field: raw contents are for every output or none), else in typed contents."""
    dtypes = {name: tensors.dtype_of_array(array) for name, array in outputs.items()}
    raw = raw or any(dtype.name not in _CONTENTS for dtype in dtypes.values())
    for name, array in outputs.items():
        dtype = dtypes[name]
        tensor = response.outputs.add(name=name, datatype=dtype.v2, shape=array.shape)
        if raw:
            response.raw_output_contents.append(tensors.to_raw(array, dtype))
        else:
            getattr(tensor.contents, _CONTENTS[dtype.name]).extend(tensors.to_typed(array, dtype))
