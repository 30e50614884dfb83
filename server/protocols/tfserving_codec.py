"""TensorFlow's ``TensorProto`` to NumPy arrays and back, as TF Serving reads and writes them, for ``tfserving``.

Inputs come from ``tensor_content`` (what ``tf.make_tensor_proto`` writes for a
numeric array of more than one element: one ``np.frombuffer``) or from the typed
field of their dtype (``float_val``, ``int_val``, ..., ``string_val``); like
``tf.make_ndarray`` and TF Serving, fewer typed values than elements repeat the
last one. Outputs go out in the typed field of their dtype, as TF Serving's
Predict answers, so that clients reading ``outputs[...].float_val`` work as well as
those calling ``tf.make_ndarray``. The dtypes and the decoding rules are the codec
core's (``tensorgate.v1.tensors``); this module maps them onto a TensorProto's
fields. Malformed tensors raise ``TensorCodecError``.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from tensorgate.v1 import tensors
from tensorgate.v1.tensors import TensorCodecError

# The typed field of each dtype. half_val holds the bits of each float16 value, in an int32.
_FIELDS = {
    "float16": "half_val",
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "int64": "int64_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "string": "string_val",
}
_HALF_BITS = np.dtype("<u2")


def tf_dtype_of(data_type: int) -> int:
    """The TensorFlow DataType of a ``tensorgate.v1.DataType`` (for signature metadata)."""
    return tensors.BY_V1[data_type].tf


def decode(tensor: tensor_pb2.TensorProto, name: str, max_elements: int) -> np.ndarray:
    """An input as an array of its dtype and shape; TensorCodecError naming ``name`` when it cannot be one.

    ``max_elements`` bounds what repeating the last value may allocate; any other array is no larger than the
    request that carried it.
    """
    dtype = tensors.BY_TF.get(tensor.dtype)
    if dtype is None:
        supported = sorted(types_pb2.DataType.Name(known.tf) for known in tensors.DTYPES)
        raise TensorCodecError(f"{name}: dtype {_dtype_name(tensor.dtype)} is not supported; use one of {supported}")
    if tensor.tensor_shape.unknown_rank:
        raise TensorCodecError(f"{name}: tensor_shape has an unknown rank; give its dimensions")
    shape = tensors.checked_shape((dim.size for dim in tensor.tensor_shape.dim), name)
    count = tensors.element_count(shape)
    if tensor.tensor_content:
        if dtype.is_string:  # TensorFlow keeps strings in string_val only
            got = len(tensor.tensor_content)
            raise TensorCodecError(f"{name}: shape {list(shape)} needs string_val, got {got} bytes of tensor_content")
        return tensors.from_raw(tensor.tensor_content, dtype, shape, name, "tensor_content")
    field = _FIELDS[dtype.name]
    given = len(getattr(tensor, field))
    if given > count:
        raise TensorCodecError(f"{name}: shape {list(shape)} holds {count} values, got {given} in {field}")
    if given < count and count > max_elements:
        raise TensorCodecError(f"{name} has {count} elements, more than the limit of {max_elements}")
    if field == "half_val":
        array = tensors.narrowed(np.array(tensor.half_val, dtype=np.int32), _HALF_BITS, name).view(dtype.numpy)
    else:
        array = tensors.typed_array(tensor, field, dtype, name)
    if 0 < given < count:
        array = np.concatenate([array, np.repeat(array[-1:], count - given)])
    elif not given:
        array = np.full(count, b"", dtype=object) if dtype.is_string else np.zeros(count, dtype.numpy)
    return array.reshape(shape)


def encode_into(array: np.ndarray, tensor: tensor_pb2.TensorProto) -> None:
    """Fill an empty TensorProto (a new map entry of a response) from an array, in its dtype's typed field."""
    dtype = tensors.dtype_of_array(array)
    tensor.dtype = dtype.tf
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    field = _FIELDS[dtype.name]
    if field == "half_val":
        values = np.ascontiguousarray(array, dtype=dtype.numpy).view(_HALF_BITS).ravel().tolist()
    else:
        values = tensors.to_typed(array, dtype)
    getattr(tensor, field).extend(values)


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)
