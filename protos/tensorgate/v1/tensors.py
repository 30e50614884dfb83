"""The tensor-codec core: which dtypes exist, and the rules every protocol's tensor encoding shares.

``tensorgate.v1.codec`` (tensorgate.v1 ``Tensor``), the server's ``kserve_v2_codec`` (Open Inference Protocol
v2) and ``tfserving_codec`` (TensorFlow ``TensorProto``) map their message fields onto these functions; what a
dtype is called in each protocol, how a shape is checked, how raw bytes and typed values become an array and
back, and how a narrow integer is range-checked are decided here, once.

It lives in ``tensorgate.v1`` because the Python client ships that package: the client and the server decode
with the same rules, and this module imports nothing of the server (and not TensorFlow: the TensorFlow column
holds the ``DataType`` enum values of ``tensorflow/core/framework/types.proto`` as plain integers).

Errors are ``TensorCodecError``, a ``ValueError`` whose text names the tensor (``name``) and the message field at
fault; the server answers them with INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tensorgate.v1.tensor_pb2 import DataType


class TensorCodecError(ValueError):
    """A tensor message is malformed: its dtype, shape and contents disagree."""


STRING_DTYPE = np.dtype(object)  # how strings are held in NumPy: an object array of bytes
MAX_RANK = 32  # dimensions of a tensor (numpy stops at 64)
MAX_ELEMENTS = 2**62  # product of the non-zero dimensions: beyond it numpy cannot even describe the shape


@dataclass(frozen=True)
class Dtype:
    """One element type: its name, how NumPy holds it, and what each protocol calls it."""

    name: str  # tensorgate's readable name ("float32"), used in messages and metadata
    numpy: np.dtype
    v1: DataType  # tensorgate.v1 DataType
    v2: str  # Open Inference Protocol v2 datatype
    tf: int  # TensorFlow DataType (types.proto)
    tf_name: str  # its name there, as TF Serving's REST metadata prints it

    @property
    def is_string(self) -> bool:
        return self.numpy is STRING_DTYPE


DTYPES: tuple[Dtype, ...] = (
    Dtype("float16", np.dtype("<f2"), DataType.DATA_TYPE_FLOAT16, "FP16", 19, "DT_HALF"),
    Dtype("float32", np.dtype("<f4"), DataType.DATA_TYPE_FLOAT32, "FP32", 1, "DT_FLOAT"),
    Dtype("float64", np.dtype("<f8"), DataType.DATA_TYPE_FLOAT64, "FP64", 2, "DT_DOUBLE"),
    Dtype("int8", np.dtype("i1"), DataType.DATA_TYPE_INT8, "INT8", 6, "DT_INT8"),
    Dtype("int16", np.dtype("<i2"), DataType.DATA_TYPE_INT16, "INT16", 5, "DT_INT16"),
    Dtype("int32", np.dtype("<i4"), DataType.DATA_TYPE_INT32, "INT32", 3, "DT_INT32"),
    Dtype("int64", np.dtype("<i8"), DataType.DATA_TYPE_INT64, "INT64", 9, "DT_INT64"),
    Dtype("uint8", np.dtype("u1"), DataType.DATA_TYPE_UINT8, "UINT8", 4, "DT_UINT8"),
    Dtype("uint16", np.dtype("<u2"), DataType.DATA_TYPE_UINT16, "UINT16", 17, "DT_UINT16"),
    Dtype("uint32", np.dtype("<u4"), DataType.DATA_TYPE_UINT32, "UINT32", 22, "DT_UINT32"),
    Dtype("uint64", np.dtype("<u8"), DataType.DATA_TYPE_UINT64, "UINT64", 23, "DT_UINT64"),
    Dtype("bool", np.dtype("?"), DataType.DATA_TYPE_BOOL, "BOOL", 10, "DT_BOOL"),
    Dtype("string", STRING_DTYPE, DataType.DATA_TYPE_STRING, "BYTES", 7, "DT_STRING"),
)
BY_NAME: Mapping[str, Dtype] = {dtype.name: dtype for dtype in DTYPES}
BY_V1: Mapping[int, Dtype] = {dtype.v1: dtype for dtype in DTYPES}
BY_V2: Mapping[str, Dtype] = {dtype.v2: dtype for dtype in DTYPES}
BY_TF: Mapping[int, Dtype] = {dtype.tf: dtype for dtype in DTYPES}

# The values a repeated protobuf field can hold, by its C++ type: a narrower integer dtype carried in a wider
# field (int8 in an int32 field, uint32 in a uint64 one) is range-checked instead of wrapped around.
_FIELD_TYPES: dict[int, np.dtype] = {
    FieldDescriptor.CPPTYPE_INT32: np.dtype("<i4"),
    FieldDescriptor.CPPTYPE_INT64: np.dtype("<i8"),
    FieldDescriptor.CPPTYPE_UINT32: np.dtype("<u4"),
    FieldDescriptor.CPPTYPE_UINT64: np.dtype("<u8"),
}
_LENGTH_PREFIX = struct.Struct("<I")


def by_name(name: str) -> Dtype:
    """The dtype of a readable name such as "float32" or "string"."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise TensorCodecError(f"unsupported dtype {name!r}; supported: {', '.join(sorted(BY_NAME))}") from None


def dtype_of_array(array: np.ndarray) -> Dtype:
    """The dtype of a NumPy array (object, bytes and str arrays are strings)."""
    if array.dtype.kind in "OSU":
        return BY_NAME["string"]
    return by_name(array.dtype.name)


def element_count(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape (1 for a scalar)."""
    return math.prod(shape)


def checked_shape(dims: Iterable[int], name: str) -> tuple[int, ...]:
    """``dims`` as a shape NumPy can hold: TensorCodecError naming ``name`` for too many dimensions, a negative
    one, or more elements than NumPy can describe."""
    shape = tuple(dims)
    if len(shape) > MAX_RANK:
        raise TensorCodecError(f"{name}: shape has {len(shape)} dimensions, more than {MAX_RANK}")
    if any(dim < 0 for dim in shape):
        raise TensorCodecError(f"{name}: shape {list(shape)} has a negative dimension")
    if math.prod(dim for dim in shape if dim) >= MAX_ELEMENTS:  # an empty tensor may not overflow either
        raise TensorCodecError(f"{name}: shape {list(shape)} is too large")
    return shape


def from_raw(raw: bytes, dtype: Dtype, shape: tuple[int, ...], name: str, field: str) -> np.ndarray:
    """Decode row-major little-endian bytes (strings: each a 4-byte little-endian length, then its bytes).

    Numbers are a zero-copy ``np.frombuffer`` view. ``field`` names where ``raw`` came from, for messages.
    """
    count = element_count(shape)
    if dtype.is_string:
        return _split_length_prefixed(raw, shape, count, name, field)
    expected = count * dtype.numpy.itemsize
    if len(raw) != expected:
        raise TensorCodecError(
            f"{name}: shape {list(shape)} of {dtype.name} needs {expected} raw bytes, got {len(raw)} in {field}"
        )
    return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)


def _split_length_prefixed(raw: bytes, shape: tuple[int, ...], count: int, name: str, field: str) -> np.ndarray:
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH_PREFIX.size > len(raw):
            raise TensorCodecError(f"{name}: raw string contents in {field} end inside a length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise TensorCodecError(f"{name}: raw string element {len(elements)} in {field} is cut short")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise TensorCodecError(f"{name}: shape {list(shape)} needs {count} strings, got {len(elements)} in {field}")
    return object_array(elements, shape)


def to_raw(array: np.ndarray, dtype: Dtype) -> bytes:
    """``array`` as the raw bytes ``from_raw`` reads back."""
    if dtype.is_string:
        return b"".join(_LENGTH_PREFIX.pack(len(v)) + v for v in as_bytes(array.ravel().tolist()))
    return np.ascontiguousarray(array, dtype=dtype.numpy).tobytes()


def from_typed(message: Message, field: str, dtype: Dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Decode the values of a repeated ``field`` of ``message``, which must hold exactly one per element."""
    count = element_count(shape)
    got = len(getattr(message, field))
    if got != count:
        noun = "strings" if dtype.is_string else "values"
        raise TensorCodecError(f"{name}: shape {list(shape)} needs {count} {noun}, got {got} in {field}")
    return typed_array(message, field, dtype, name).reshape(shape)


def typed_array(message: Message, field: str, dtype: Dtype, name: str) -> np.ndarray:
    """The values of a repeated ``field`` of ``message`` as a flat array of ``dtype`` (strings as bytes).

    An integer dtype narrower than the field is range-checked (``narrowed``).
    """
    values = getattr(message, field)
    if dtype.is_string:
        return object_array(as_bytes(values), (len(values),))
    field_type = _FIELD_TYPES.get(message.DESCRIPTOR.fields_by_name[field].cpp_type)
    if dtype.numpy.kind in "iu" and field_type is not None and not np.can_cast(field_type, dtype.numpy):
        return narrowed(np.array(values, dtype=field_type), dtype.numpy, name)
    return np.array(values, dtype=dtype.numpy)


def narrowed(wide: np.ndarray, target: np.dtype, name: str) -> np.ndarray:
    """``wide`` as the integer type ``target``, after checking that every value fits (NumPy would wrap it)."""
    limits = np.iinfo(target)
    if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
        raise TensorCodecError(f"{name}: a value is outside the range of {target.name} [{limits.min}, {limits.max}]")
    return wide.astype(target)


def to_typed(array: np.ndarray, dtype: Dtype) -> list[Any]:
    """``array``'s elements in row-major order as Python values for a typed field (strings as bytes)."""
    values = array.ravel().tolist()
    return as_bytes(values) if dtype.is_string else values


def as_bytes(values: Iterable[object]) -> list[bytes]:
    """String elements as bytes: bytes stay, anything else (str, a number in an object array) is UTF-8 text."""
    return [v if isinstance(v, bytes) else str(v).encode() for v in values]


def object_array(values: Sequence[bytes], shape: tuple[int, ...]) -> np.ndarray:
    """An object array of ``shape`` holding ``values`` (``np.array`` would make fixed-width bytes instead)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)
