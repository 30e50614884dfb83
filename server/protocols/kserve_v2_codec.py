"""Open Inference Protocol v2 tensors to NumPy arrays and back, for ``kserve_v2``.

A v2 tensor is a name, a ``datatype`` ("FP32", "BYTES", ...), a shape and its
values, either in ``raw_input_contents``/``raw_output_contents`` (row-major
little-endian bytes, what Triton's clients send: one ``np.frombuffer``, one
``tobytes`` back) or in the typed ``InferTensorContents`` field of its datatype
(what JSON callers send: one NumPy conversion per tensor). BYTES elements in raw
form carry a 4-byte little-endian length each, which is also tensorgate's own
raw layout for strings, so ``tensorgate.v1.codec`` splits and joins them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tensorgate.compat.kserve_v2.grpc_service_pb2 import InferTensorContents, ModelInferRequest, ModelInferResponse
from tensorgate.server.errors import InvalidArgumentError, quote
from tensorgate.v1 import codec
from tensorgate.v1.tensor_pb2 import DataType, Tensor


@dataclass(frozen=True)
class _Datatype:
    """How one v2 datatype is held in NumPy and in InferTensorContents (None: raw contents only)."""

    numpy: np.dtype
    contents: str | None


DATATYPES: dict[str, _Datatype] = {
    "BOOL": _Datatype(np.dtype("?"), "bool_contents"),
    "UINT8": _Datatype(np.dtype("u1"), "uint_contents"),
    "UINT16": _Datatype(np.dtype("<u2"), "uint_contents"),
    "UINT32": _Datatype(np.dtype("<u4"), "uint_contents"),
    "UINT64": _Datatype(np.dtype("<u8"), "uint64_contents"),
    "INT8": _Datatype(np.dtype("i1"), "int_contents"),
    "INT16": _Datatype(np.dtype("<i2"), "int_contents"),
    "INT32": _Datatype(np.dtype("<i4"), "int_contents"),
    "INT64": _Datatype(np.dtype("<i8"), "int64_contents"),
    "FP16": _Datatype(np.dtype("<f2"), None),  # the protocol has no typed field for 16-bit floats
    "FP32": _Datatype(np.dtype("<f4"), "fp32_contents"),
    "FP64": _Datatype(np.dtype("<f8"), "fp64_contents"),
    "BYTES": _Datatype(codec.STRING_DTYPE, "bytes_contents"),
}
_BY_NUMPY = {info.numpy: name for name, info in DATATYPES.items()}
_CONTENTS_FIELDS = tuple(field.name for field in InferTensorContents.DESCRIPTOR.fields)
# The range a typed field holds, where it is wider than the datatype (INT8 in int32 values, ...).
_FIELD_DTYPES = {"int_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint64)}


def datatype(dtype: np.dtype) -> str:
    """The v2 datatype of a NumPy dtype (object: BYTES)."""
    return _BY_NUMPY[np.dtype(dtype)]


def datatype_of(data_type: int) -> str:
    """The v2 datatype of a ``tensorgate.v1.DataType`` (for model metadata)."""
    return datatype(codec.numpy_dtype(data_type))


def decode_inputs(request: ModelInferRequest) -> tuple[dict[str, np.ndarray], bool]:
    """The request's inputs by name, and whether they came as raw contents (then outputs go back raw too)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidArgumentError(f"input {quote(tensor.name)} is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidArgumentError(
                f"input {quote(tensor.name)}: shared-memory inputs are not supported; send contents"
            )
        inputs[tensor.name] = decode_input(tensor, raw[index] if raw else None)
    return inputs, bool(raw)


def decode_input(tensor: ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """One input as an array of its datatype and shape, from ``raw`` bytes or else its typed contents."""
    name = f"input {quote(tensor.name)}"
    info = DATATYPES.get(tensor.datatype)
    if info is None:
        raise InvalidArgumentError(
            f"{name}: datatype {quote(tensor.datatype)} is not supported; use one of {sorted(DATATYPES)}"
        )
    try:
        shape = codec.checked_shape(tensor.shape, name)
        if raw is not None:
            if tensor.HasField("contents"):
                raise codec.TensorCodecError(f"{name}: contents and raw_input_contents are both set; use one")
            return _from_raw(raw, info, shape, name)
    except codec.TensorCodecError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return _from_contents(tensor.contents, tensor.datatype, info, shape, name)


def _from_raw(raw: bytes, info: _Datatype, shape: tuple[int, ...], name: str) -> np.ndarray:
    if info.numpy is codec.STRING_DTYPE:
        return codec.decode(Tensor(dtype=DataType.DATA_TYPE_STRING, shape=shape, raw_contents=raw), name)
    expected = codec.element_count(shape) * info.numpy.itemsize
    if len(raw) != expected:
        raise codec.TensorCodecError(f"{name}: shape {list(shape)} needs {expected} raw bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=info.numpy).reshape(shape)


def _from_contents(
    contents: InferTensorContents, datatype_name: str, info: _Datatype, shape: tuple[int, ...], name: str
) -> np.ndarray:
    count = codec.element_count(shape)
    used = [field for field in _CONTENTS_FIELDS if len(getattr(contents, field))]
    if info.contents is None:
        raise InvalidArgumentError(f"{name}: {datatype_name} values travel only in raw_input_contents")
    if used and used != [info.contents]:
        raise InvalidArgumentError(f"{name}: {datatype_name} takes its values in contents.{info.contents}, not {used}")
    values = getattr(contents, info.contents)
    if len(values) != count:
        raise InvalidArgumentError(f"{name}: shape {list(shape)} needs {count} values, got {len(values)}")
    if info.numpy is codec.STRING_DTYPE:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = _FIELD_DTYPES.get(info.contents)
    if wide is not None and info.numpy.itemsize < 4:  # check the range instead of letting NumPy wrap values
        array = np.array(values, dtype=wide)
        limits = np.iinfo(info.numpy)
        if count and (array.min() < limits.min or array.max() > limits.max):
            raise InvalidArgumentError(f"{name}: a value is outside the range of {datatype_name}")
        return array.astype(info.numpy).reshape(shape)
    return np.array(values, dtype=info.numpy).reshape(shape)


def encode_outputs(response: ModelInferResponse, outputs: Mapping[str, np.ndarray], raw: bool) -> None:
    """Add ``outputs`` to ``response``: as raw_output_contents when ``raw`` (or when an output is FP16, which has
    no typed field: raw contents are for every output or none), else in typed contents."""
    raw = raw or any(array.dtype == np.float16 for array in outputs.values())
    for name, array in outputs.items():
        tensor = response.outputs.add(name=name, datatype=datatype(array.dtype), shape=array.shape)
        info = DATATYPES[tensor.datatype]
        if raw:
            response.raw_output_contents.append(_to_raw(array, info))
        elif info.numpy is codec.STRING_DTYPE:
            tensor.contents.bytes_contents.extend(_as_bytes(array))
        else:
            getattr(tensor.contents, info.contents or "").extend(array.ravel().tolist())


def _to_raw(array: np.ndarray, info: _Datatype) -> bytes:
    if info.numpy is codec.STRING_DTYPE:
        return codec.encode(array, raw=True).raw_contents
    return np.ascontiguousarray(array, dtype=info.numpy).tobytes()


def _as_bytes(array: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
