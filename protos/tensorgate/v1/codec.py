"""Conversion between ``tensorgate.v1.Tensor`` messages and NumPy arrays.

Shared by the server and the Python client so that both sides agree on one
encoding. The raw path (``raw_contents``) is a zero-copy ``np.frombuffer`` view
on decode and one ``tobytes`` on encode: no per-element Python work. The typed
fields exist for JSON callers and are converted element by element. The dtype
facts and the decoding rules are the codec core's (``tensorgate.v1.tensors``);
this module maps them onto the fields of a ``Tensor``.
"""

from __future__ import annotations

import numpy as np

from tensorgate.v1 import tensors
from tensorgate.v1.tensor_pb2 import DataType, Tensor
from tensorgate.v1.tensors import STRING_DTYPE as STRING_DTYPE
from tensorgate.v1.tensors import TensorCodecError as TensorCodecError

# The typed field of each dtype; strings may also come as text in string_values.
_FIELDS = {
    "float16": "float_values",
    "float32": "float_values",
    "float64": "double_values",
    "int8": "int_values",
    "int16": "int_values",
    "int32": "int_values",
    "int64": "int64_values",
    "uint8": "int_values",
    "uint16": "int_values",
    "uint32": "uint64_values",
    "uint64": "uint64_values",
    "bool": "bool_values",
    "string": "bytes_values",
}
_STRING_FIELDS = ("string_values", "bytes_values")
_TYPED_FIELDS = (
    "float_values",
    "double_values",
    "int_values",
    "int64_values",
    "uint64_values",
    "bool_values",
    *_STRING_FIELDS,
)


def dtype_name(dtype: int) -> str:
    """Readable name of a DataType value ("float32"), for messages and metadata."""
    info = tensors.BY_V1.get(dtype)
    if info is not None:
        return info.name
    return DataType.Name(dtype) if dtype in DataType.values() else f"unknown ({dtype})"


def dtype_from_name(name: str) -> int:
    """DataType value of a readable name such as "float32" or "string"."""
    return tensors.by_name(name).v1


def dtype_of_array(array: np.ndarray) -> int:
    """DataType value matching a NumPy array (object and bytes/str arrays are strings)."""
    return tensors.dtype_of_array(array).v1


def numpy_dtype(dtype: int) -> np.dtype:
    """NumPy dtype used for a DataType (object for strings)."""
    return tensors.BY_V1[dtype].numpy


def decode(tensor: Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor into an array of its declared dtype and shape.

    Raises TensorCodecError naming ``name`` when the dtype is unset, the shape
    is negative, more than one encoding is used, or the number of values (or
    raw bytes) does not match the shape.
    """
    dtype = tensors.BY_V1.get(tensor.dtype)
    if dtype is None:
        supported = ", ".join(sorted(tensors.BY_NAME))
        raise TensorCodecError(f"{name}: dtype is {dtype_name(tensor.dtype)}; set one of {supported}")
    shape = tensors.checked_shape(tensor.shape, name)
    used = [field for field in _TYPED_FIELDS if len(getattr(tensor, field))]
    if tensor.raw_contents:
        if used:
            raise TensorCodecError(f"{name}: raw_contents and {used[0]} are both set; use one encoding")
        return tensors.from_raw(tensor.raw_contents, dtype, shape, name, "raw_contents")
    if len(used) > 1:
        raise TensorCodecError(f"{name}: values given in both {used[0]} and {used[1]}; use one field")
    field = used[0] if used else _FIELDS[dtype.name]
    if dtype.is_string and field not in _STRING_FIELDS:
        raise TensorCodecError(f"{name}: dtype string takes its values in string_values or bytes_values")
    if not dtype.is_string and field != _FIELDS[dtype.name]:
        raise TensorCodecError(f"{name}: dtype {dtype.name} takes its values in {_FIELDS[dtype.name]}, not {field}")
    return tensors.from_typed(tensor, field, dtype, shape, name)


def encode(array: np.ndarray, raw: bool = True) -> Tensor:
    """Encode an array as a new Tensor: ``raw_contents`` when ``raw``, else typed fields (for JSON)."""
    tensor = Tensor()
    encode_into(array, tensor, raw)
    return tensor


def encode_into(array: np.ndarray, tensor: Tensor, raw: bool = True) -> None:
    """Fill an empty Tensor (such as a new map entry of a response) from an array."""
    dtype = tensors.dtype_of_array(array)
    tensor.dtype = dtype.v1
    tensor.shape.extend(array.shape)
    if raw:
        tensor.raw_contents = tensors.to_raw(array, dtype)
        return
    values = tensors.to_typed(array, dtype)
    if dtype.is_string:
        try:  # readable text in JSON when every element is UTF-8, base64 bytes otherwise
            tensor.string_values.extend(v.decode() for v in values)
            return
        except UnicodeDecodeError:
            del tensor.string_values[:]
    getattr(tensor, _FIELDS[dtype.name]).extend(values)
