"""The Tensor codec shared by server and client: every dtype both ways, and malformed tensors."""

from __future__ import annotations

import numpy as np
import pytest

from tensorgate.v1 import codec
from tensorgate.v1.tensor_pb2 import DataType, Tensor

ARRAYS = {
    "float16": np.array([[0.5, -1.25]], np.float16),
    "float32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
    "float64": np.array([1e300, -2.5]),
    "int8": np.array([-128, 127], np.int8),
    "int16": np.array([-32768, 32767], np.int16),
    "int32": np.array([[-(2**31), 2**31 - 1]], np.int32),
    "int64": np.array([-(2**63), 2**63 - 1], np.int64),
    "uint8": np.array([0, 255], np.uint8),
    "uint16": np.array([0, 65535], np.uint16),
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "uint64": np.array([0, 2**64 - 1], np.uint64),
    "bool": np.array([[True, False, True]]),
    "string": np.array([b"caf\xc3\xa9", b"", b"\xff\x00"], dtype=object),
    "scalar": np.array(3.5, np.float32),
}


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_round_trip(name: str, raw: bool) -> None:
    array = ARRAYS[name]
    tensor = Tensor.FromString(codec.encode(array, raw=raw).SerializeToString())
    assert bool(tensor.raw_contents) == raw
    decoded = codec.decode(tensor)
    assert decoded.shape == array.shape
    assert decoded.dtype == (object if name == "string" else array.dtype)
    assert decoded.tolist() == array.tolist()


def test_raw_decode_is_a_view_without_copies() -> None:
    tensor = codec.encode(np.ones((100, 28, 28), np.float32))
    decoded = codec.decode(tensor)
    assert not decoded.flags.owndata


def test_utf8_strings_are_text_in_typed_form() -> None:
    tensor = codec.encode(np.array([b"caf\xc3\xa9"], dtype=object), raw=False)
    assert list(tensor.string_values) == ["caf\u00e9"] and not tensor.bytes_values


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (Tensor(shape=[1], float_values=[1]), "dtype is DATA_TYPE_UNSPECIFIED"),
        (Tensor(dtype=99, shape=[1]), "unknown (99)"),
        (Tensor(dtype=DataType.DATA_TYPE_INT32, shape=[2, 2], int_values=[1, 2, 3]), "needs 4 values, got 3"),
        (Tensor(dtype=DataType.DATA_TYPE_INT64, shape=[1], raw_contents=b"\0" * 7), "needs 8 raw bytes, got 7"),
        (Tensor(dtype=DataType.DATA_TYPE_INT8, shape=[1], int_values=[200]), "outside the range of int8"),
        (Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[1], raw_contents=b"\5\0\0\0ab"), "cut short"),
        (Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[2], string_values=["a"]), "needs 2 strings, got 1"),
        (Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[1], float_values=[1]), "string_values or bytes_values"),
        (
            Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1], float_values=[1], double_values=[1]),
            "values given in both",
        ),
        (Tensor(dtype=DataType.DATA_TYPE_UINT32, shape=[1], uint64_values=[2**32 + 5]), "outside the range of uint32"),
        (Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1] * 33, float_values=[1]), "33 dimensions, more than 32"),
        (Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2**62, 2**62, 0]), "is too large"),
    ],
)
def test_malformed_tensors(tensor: Tensor, message: str) -> None:
    with pytest.raises(codec.TensorCodecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        codec.decode(tensor, "x")
