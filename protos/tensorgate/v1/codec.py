"""Conversion between ``tensorgate.v1.Tensor`` messages and NumPy arrays.

Shared by the server and the Python client so that both sides agree on one
encoding. The raw path (``raw_contents``) is a zero-copy ``np.frombuffer`` view
on decode and one ``tobytes`` on encode: no per-element Python work. The typed
fields exist for JSON callers and are converted element by element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tensorgate.v1.tensor_pb2 import DataType, Tensor


class TensorCodecError(ValueError):
    """A tensor message is malformed: its shape, dtype and contents disagree."""


@dataclass(frozen=True)
class _DtypeInfo:
    """How one DataType is represented in NumPy and in the message."""

    name: str
    numpy: np.dtype
    typed_field: str


STRING_DTYPE = np.dtype(object)

_DTYPES: dict[int, _DtypeInfo] = {
    DataType.DATA_TYPE_FLOAT16: _DtypeInfo("float16", np.dtype("<f2"), "float_values"),
    DataType.DATA_TYPE_FLOAT32: _DtypeInfo("float32", np.dtype("<f4"), "float_values"),
    DataType.DATA_TYPE_FLOAT64: _DtypeInfo("float64", np.dtype("<f8"), "double_values"),
    DataType.DATA_TYPE_INT8: _DtypeInfo("int8", np.dtype("i1"), "int_values"),
    DataType.DATA_TYPE_INT16: _DtypeInfo("int16", np.dtype("<i2"), "int_values"),
    DataType.DATA_TYPE_INT32: _DtypeInfo("int32", np.dtype("<i4"), "int_values"),
    DataType.DATA_TYPE_INT64: _DtypeInfo("int64", np.dtype("<i8"), "int64_values"),
    DataType.DATA_TYPE_UINT8: _DtypeInfo("uint8", np.dtype("u1"), "int_values"),
    DataType.DATA_TYPE_UINT16: _DtypeInfo("uint16", np.dtype("<u2"), "int_values"),
    DataType.DATA_TYPE_UINT32: _DtypeInfo("uint32", np.dtype("<u4"), "uint64_values"),
    DataType.DATA_TYPE_UINT64: _DtypeInfo("uint64", np.dtype("<u8"), "uint64_values"),
    DataType.DATA_TYPE_BOOL: _DtypeInfo("bool", np.dtype("?"), "bool_values"),
    DataType.DATA_TYPE_STRING: _DtypeInfo("string", STRING_DTYPE, "bytes_values"),
}
_BY_NAME: dict[str, int] = {info.name: code for code, info in _DTYPES.items()}
_TYPED_FIELDS = (
    "float_values",
    "double_values",
    "int_values",
    "int64_values",
    "uint64_values",
    "bool_values",
    "string_values",
    "bytes_values",
)
_LENGTH_PREFIX = struct.Struct("<I")


def dtype_name(dtype: int) -> str:
    """Readable name of a DataType value ("float32"), for messages and metadata."""
    info = _DTYPES.get(dtype)
    if info is not None:
        return info.name
    return DataType.Name(dtype) if dtype in DataType.values() else f"unknown ({dtype})"


def dtype_from_name(name: str) -> int:
    """DataType value of a readable name such as "float32" or "string"."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise TensorCodecError(f"unsupported dtype {name!r}; supported: {', '.join(sorted(_BY_NAME))}") from None


def dtype_of_array(array: np.ndarray) -> int:
    """DataType value matching a NumPy array (object and bytes/str arrays are strings)."""
    if array.dtype.kind in "OSU":
        return DataType.DATA_TYPE_STRING
    return dtype_from_name(array.dtype.name)


def numpy_dtype(dtype: int) -> np.dtype:
    """NumPy dtype used for a DataType (object for strings)."""
    return _DTYPES[dtype].numpy


_FIELD_ITEMSIZE = {"int_values": 4, "int64_values": 8, "uint64_values": 8}
MAX_RANK = 32  # dimensions of a tensor (numpy stops at 64)
MAX_ELEMENTS = 2**62  # product of the non-zero dimensions: beyond it numpy cannot even describe the shape


def element_count(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape (1 for a scalar)."""
    return math.prod(shape)


def checked_shape(dims: Iterable[int], name: str = "tensor") -> tuple[int, ...]:
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


def decode(tensor: Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor into an array of its declared dtype and shape.

    Raises TensorCodecError naming ``name`` when the dtype is unset, the shape
    is negative, more than one encoding is used, or the number of values (or
    raw bytes) does not match the shape.
    """
    info = _DTYPES.get(tensor.dtype)
    if info is None:
        raise TensorCodecError(f"{name}: dtype is {dtype_name(tensor.dtype)}; set one of {', '.join(sorted(_BY_NAME))}")
    shape = checked_shape(tensor.shape, name)
    count = element_count(shape)
    used = [field for field in _TYPED_FIELDS if len(getattr(tensor, field))]
    if tensor.raw_contents:
        if used:
            raise TensorCodecError(f"{name}: raw_contents and {used[0]} are both set; use one encoding")
        return _decode_raw(tensor.raw_contents, info, shape, count, name)
    if len(used) > 1:
        raise TensorCodecError(f"{name}: values given in both {used[0]} and {used[1]}; use one field")
    if info.numpy is STRING_DTYPE:
        return _decode_strings(tensor, shape, count, name)
    field = used[0] if used else info.typed_field
    if field != info.typed_field:
        raise TensorCodecError(f"{name}: dtype {info.name} takes its values in {info.typed_field}, not {field}")
    values = getattr(tensor, field)
    if len(values) != count:
        raise TensorCodecError(f"{name}: shape {list(shape)} needs {count} values, got {len(values)} in {field}")
    if info.numpy.kind in "iu" and info.numpy.itemsize < _FIELD_ITEMSIZE[info.typed_field]:
        # A narrower integer type than its field (int8 in int_values, uint32 in uint64_values): check the range
        # instead of letting numpy wrap values around.
        wide = np.array(values, dtype=np.uint64 if info.typed_field == "uint64_values" else np.int64)
        limits = np.iinfo(info.numpy)
        if count and (wide.min() < limits.min or wide.max() > limits.max):
            raise TensorCodecError(f"{name}: a value is outside the range of {info.name} [{limits.min}, {limits.max}]")
        return wide.astype(info.numpy).reshape(shape)
    return np.array(values, dtype=info.numpy).reshape(shape)


def _decode_raw(raw: bytes, info: _DtypeInfo, shape: tuple[int, ...], count: int, name: str) -> np.ndarray:
    if info.numpy is STRING_DTYPE:
        return _split_length_prefixed(raw, shape, count, name)
    expected = count * info.numpy.itemsize
    if len(raw) != expected:
        raise TensorCodecError(f"{name}: shape {list(shape)} of {info.name} needs {expected} raw bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=info.numpy).reshape(shape)


def _split_length_prefixed(raw: bytes, shape: tuple[int, ...], count: int, name: str) -> np.ndarray:
    """Split KServe-style raw strings: a 4-byte little-endian length before each element."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise TensorCodecError(f"{name}: raw string contents end inside a length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorCodecError(f"{name}: raw string element {len(elements)} is cut short")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise TensorCodecError(
            f"{name}: shape {list(shape)} needs {count} strings, got {len(elements)} in raw_contents"
        )
    return _object_array(elements, shape)


def _decode_strings(tensor: Tensor, shape: tuple[int, ...], count: int, name: str) -> np.ndarray:
    values: list[bytes]
    if len(tensor.string_values):
        values = [text.encode() for text in tensor.string_values]
    elif len(tensor.bytes_values) or count == 0:
        values = list(tensor.bytes_values)
    else:
        raise TensorCodecError(f"{name}: dtype string takes its values in string_values or bytes_values")
    if len(values) != count:
        raise TensorCodecError(f"{name}: shape {list(shape)} needs {count} strings, got {len(values)}")
    return _object_array(values, shape)


def _object_array(values: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def encode(array: np.ndarray, raw: bool = True) -> Tensor:
    """Encode an array as a new Tensor: ``raw_contents`` when ``raw``, else typed fields (for JSON)."""
    tensor = Tensor()
    encode_into(array, tensor, raw)
    return tensor


def encode_into(array: np.ndarray, tensor: Tensor, raw: bool = True) -> None:
    """Fill an empty Tensor (such as a new map entry of a response) from an array."""
    tensor.dtype = dtype_of_array(array)
    tensor.shape.extend(array.shape)
    info = _DTYPES[tensor.dtype]
    if info.numpy is STRING_DTYPE:
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
        if raw:
            tensor.raw_contents = b"".join(_LENGTH_PREFIX.pack(len(v)) + v for v in values)
            return
        try:  # readable text in JSON when every element is UTF-8, base64 bytes otherwise
            tensor.string_values.extend(v.decode() for v in values)
        except UnicodeDecodeError:
            del tensor.string_values[:]
            tensor.bytes_values.extend(values)
    elif raw:
        tensor.raw_contents = np.ascontiguousarray(array, dtype=info.numpy).tobytes()
    else:
        getattr(tensor, info.typed_field).extend(array.ravel().tolist())
