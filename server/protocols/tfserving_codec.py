"""TensorFlow's ``TensorProto`` to NumPy arrays and back, as TF Serving reads and writes them, for ``tfserving``.

Inputs come from ``tensor_content`` (what ``tf.make_tensor_proto`` writes for a
numeric array of more than one element: one ``np.frombuffer``) or from the typed
field of their dtype (``float_val``, ``int_val``, ..., ``string_val``); like
``tf.make_ndarray`` and TF Serving, fewer typed values than elements repeat the
last one. Outputs go out in the typed field of their dtype, as TF Serving's
Predict answers, so that clients reading ``outputs[...].float_val`` work as well as
those calling ``tf.make_ndarray``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from tensorgate.server.errors import InvalidArgumentError
from tensorgate.v1 import codec


@dataclass(frozen=True)
class _Dtype:
    """How one TensorFlow dtype is held in NumPy and in a TensorProto's typed fields."""

    numpy: np.dtype
    field: str


_DTYPES: dict[int, _Dtype] = {
    types_pb2.DT_FLOAT: _Dtype(np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: _Dtype(np.dtype("<f8"), "double_val"),
    types_pb2.DT_HALF: _Dtype(np.dtype("<f2"), "half_val"),  # the bits of each value, in an int32
    types_pb2.DT_INT8: _Dtype(np.dtype("i1"), "int_val"),
    types_pb2.DT_INT16: _Dtype(np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT32: _Dtype(np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT64: _Dtype(np.dtype("<i8"), "int64_val"),
    types_pb2.DT_UINT8: _Dtype(np.dtype("u1"), "int_val"),
    types_pb2.DT_UINT16: _Dtype(np.dtype("<u2"), "int_val"),
    types_pb2.DT_UINT32: _Dtype(np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: _Dtype(np.dtype("<u8"), "uint64_val"),
    types_pb2.DT_BOOL: _Dtype(np.dtype("?"), "bool_val"),
    types_pb2.DT_STRING: _Dtype(codec.STRING_DTYPE, "string_val"),
}
_BY_NUMPY = {info.numpy: dtype for dtype, info in _DTYPES.items()}


def tf_dtype(dtype: np.dtype) -> int:
    """The TensorFlow DataType of a NumPy dtype (object: DT_STRING)."""
    return _BY_NUMPY[np.dtype(dtype)]


def tf_dtype_of(data_type: int) -> int:
    """The TensorFlow DataType of a ``tensorgate.v1.DataType`` (for signature metadata)."""
    return tf_dtype(codec.numpy_dtype(data_type))


def decode(tensor: tensor_pb2.TensorProto, name: str, max_elements: int) -> np.ndarray:
    """An input as an array of its dtype and shape; INVALID_ARGUMENT naming ``name`` when it cannot be one.

    ``max_elements`` bounds what repeating the last value may allocate; any other array is no larger than the
    request that carried it.
    """
    info = _DTYPES.get(tensor.dtype)
    if info is None:
        supported = sorted(types_pb2.DataType.Name(dtype) for dtype in _DTYPES)
        raise InvalidArgumentError(
            f"{name}: dtype {_dtype_name(tensor.dtype)} is not supported; use one of {supported}"
        )
    if tensor.tensor_shape.unknown_rank:
        raise InvalidArgumentError(f"{name}: tensor_shape has an unknown rank; give its dimensions")
    try:
        shape = codec.checked_shape((dim.size for dim in tensor.tensor_shape.dim), name)
    except codec.TensorCodecError as exc:
        raise InvalidArgumentError(str(exc)) from None
    count = codec.element_count(shape)
    if tensor.tensor_content:
        expected = count * info.numpy.itemsize
        if info.numpy is codec.STRING_DTYPE or len(tensor.tensor_content) != expected:
            got = f"{len(tensor.tensor_content)} bytes of tensor_content"
            needs = "string_val" if info.numpy is codec.STRING_DTYPE else f"{expected} bytes"
            raise InvalidArgumentError(f"{name}: shape {list(shape)} needs {needs}, got {got}")
        return np.frombuffer(tensor.tensor_content, dtype=info.numpy).reshape(shape)
    values = getattr(tensor, info.field)
    if len(values) > count:
        raise InvalidArgumentError(
            f"{name}: shape {list(shape)} holds {count} values, got {len(values)} in {info.field}"
        )
    if len(values) < count and count > max_elements:
        raise InvalidArgumentError(f"{name} has {count} elements, more than the limit of {max_elements}")
    array = _typed_values(values, info, name)
    if 0 < len(array) < count:
        array = np.concatenate([array, np.repeat(array[-1:], count - len(array))])
    elif not len(array):
        array = np.full(count, b"", dtype=object) if info.numpy is codec.STRING_DTYPE else np.zeros(count, info.numpy)
    return array.reshape(shape)


def _typed_values(values: Sequence[Any], info: _Dtype, name: str) -> np.ndarray:
    if info.numpy is codec.STRING_DTYPE:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array
    if info.field == "half_val":
        return _narrowed(np.array(values, dtype=np.int64), np.dtype("<u2"), name).view(info.numpy)
    if info.field == "int_val" and info.numpy.itemsize < 4:
        return _narrowed(np.array(values, dtype=np.int64), info.numpy, name)
    return np.array(values, dtype=info.numpy)


def _narrowed(wide: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``wide`` as ``dtype``, after checking that no value is out of its range (NumPy would wrap it around)."""
    limits = np.iinfo(dtype)
    if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
        raise InvalidArgumentError(f"{name}: a value is outside the range of {dtype.name}")
    return wide.astype(dtype)


def encode_into(array: np.ndarray, tensor: tensor_pb2.TensorProto) -> None:
    """Fill an empty TensorProto (a new map entry of a response) from an array, in its dtype's typed field."""
    tensor.dtype = tf_dtype(array.dtype)
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    info = _DTYPES[tensor.dtype]
    values: list[Any]
    if info.numpy is codec.STRING_DTYPE:
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
    elif info.field == "half_val":
        values = np.ascontiguousarray(array, dtype=info.numpy).view(np.uint16).ravel().tolist()
    else:
        values = array.ravel().tolist()
    getattr(tensor, info.field).extend(values)


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)
