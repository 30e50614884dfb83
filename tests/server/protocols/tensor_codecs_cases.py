"""The tensor-codec core (``tensorgate.v1.tensors``) and the three codecs over it: tensorgate.v1 (shared with the
client), KServe v2 and TF Serving. Every dtype both ways, and every malformed tensor, without a server.

The TF Serving TensorProto comes from ``tensorflow.core.framework``, whose import runs TensorFlow's package
``__init__``: this module loads the TensorFlow runtime (a few seconds), though no test runs TensorFlow. The suite
runs this file in a process of its own (``test_cases_in_processes_of_their_own.py`` says why)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tensorgate.compat.kserve_v2.grpc_service_pb2 import InferTensorContents, ModelInferRequest, ModelInferResponse
from tensorgate.server.protocols import tfserving_codec
from tensorgate.server.protocols.kserve_v2_codec import datatype_of, decode_inputs, encode_outputs
from tensorgate.v1 import codec, tensors
from tensorgate.v1.tensor_pb2 import DataType, Tensor
from tensorgate.v1.tensors import TensorCodecError

# One array per dtype with the extremes of its range, a scalar and an empty tensor: what the round trips carry.
ARRAYS = {
    "float16": np.array([[0.5, -1.25], [65504, -65504]], np.float16),
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
    "string": np.array([[b"caf\xc3\xa9", b""], [b"\xff\x00", b"x" * 300]], dtype=object),
    "scalar": np.array(3.5, np.float32),
    "empty": np.zeros((0, 3), np.int8),
}
STRING = tensors.BY_NAME["string"]


@pytest.fixture(params=sorted(ARRAYS))
def array(request: pytest.FixtureRequest) -> np.ndarray:
    return ARRAYS[request.param]


def assert_same(decoded: np.ndarray, array: np.ndarray) -> None:
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype
    assert decoded.tolist() == array.tolist()


# The core


def test_the_table_has_each_dtype_once_in_every_protocol() -> None:
    assert len(tensors.DTYPES) == 13
    for column in (tensors.BY_NAME, tensors.BY_V1, tensors.BY_V2, tensors.BY_TF):
        assert len(column) == 13
    assert set(tensors.BY_V1) == set(DataType.values()) - {DataType.DATA_TYPE_UNSPECIFIED}


def test_core_raw_round_trip(array: np.ndarray) -> None:
    dtype = tensors.dtype_of_array(array)
    assert_same(tensors.from_raw(tensors.to_raw(array, dtype), dtype, array.shape, "x", "raw"), array)


def test_strings_and_text_become_bytes() -> None:
    array = np.array(["caf\u00e9", b"\xff", 7], dtype=object)
    expected = [b"caf\xc3\xa9", b"\xff", b"7"]
    assert tensors.to_typed(array, STRING) == expected
    assert tensors.from_raw(tensors.to_raw(array, STRING), STRING, (3,), "x", "raw").tolist() == expected


@pytest.mark.parametrize(
    ("array", "name"),
    [
        (np.array([b"a"], dtype=object), "string"),
        (np.array([b"ab", b"c"]), "string"),
        (np.array(["ab", "c"]), "string"),
        (np.zeros(2, np.dtype(">f4")), "float32"),
        (np.zeros(2, np.int16), "int16"),
    ],
)
def test_dtype_of_array(array: np.ndarray, name: str) -> None:
    assert tensors.dtype_of_array(array).name == name


def test_unsupported_array_dtype() -> None:
    with pytest.raises(TensorCodecError, match=re.escape("unsupported dtype 'complex64'; supported: bool, float16")):
        tensors.dtype_of_array(np.zeros(1, np.complex64))


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ([1] * 33, "x: shape has 33 dimensions, more than 32"),
        ([2, -1], "x: shape [2, -1] has a negative dimension"),
        ([2**31, 2**31, 2**31], "is too large"),
        ([2**62, 2**62, 0], "is too large"),  # no elements, and still a shape NumPy cannot describe
    ],
)
def test_checked_shape_refuses(dims: list[int], message: str) -> None:
    with pytest.raises(TensorCodecError, match=re.escape(message)):
        tensors.checked_shape(dims, "x")


def test_checked_shape_accepts_the_largest() -> None:
    assert tensors.checked_shape([1] * 32, "x") == (1,) * 32
    assert tensors.checked_shape([2**61, 0], "x") == (2**61, 0)
    assert tensors.checked_shape([], "x") == ()


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (b"\2\0", [1], "x: raw string contents in raw end inside a length prefix"),
        (b"\2\0\0\0a\1\0", [2], "x: raw string contents in raw end inside a length prefix"),
        (b"\5\0\0\0ab", [1], "x: raw string element 0 in raw is cut short"),
        (b"\0\0\0\0\3\0\0\0ab", [2], "x: raw string element 1 in raw is cut short"),
        (b"\1\0\0\0a\1\0\0\0b", [1], "x: shape [1] needs 1 strings, got 2 in raw"),
        (b"", [1], "x: shape [1] needs 1 strings, got 0 in raw"),
    ],
)
def test_length_prefixed_strings_refused(raw: bytes, shape: list[int], message: str) -> None:
    with pytest.raises(TensorCodecError, match=re.escape(message)):
        tensors.from_raw(raw, STRING, tuple(shape), "x", "raw")


# tensorgate.v1


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_v1_round_trip(array: np.ndarray, raw: bool) -> None:
    tensor = Tensor.FromString(codec.encode(array, raw=raw).SerializeToString())
    assert bool(tensor.raw_contents) == (raw and array.size > 0)
    assert_same(codec.decode(tensor), array)


def test_v1_raw_decode_is_a_view_without_copies() -> None:
    decoded = codec.decode(codec.encode(np.ones((100, 28, 28), np.float32)))
    assert not decoded.flags.owndata


def test_v1_utf8_strings_are_text_in_typed_form() -> None:
    tensor = codec.encode(np.array([b"caf\xc3\xa9"], dtype=object), raw=False)
    assert list(tensor.string_values) == ["caf\u00e9"] and not tensor.bytes_values
    tensor = codec.encode(np.array([b"caf\xc3\xa9", b"\xff"], dtype=object), raw=False)
    assert list(tensor.bytes_values) == [b"caf\xc3\xa9", b"\xff"] and not tensor.string_values


def test_v1_dtype_names() -> None:
    assert codec.dtype_name(DataType.DATA_TYPE_UINT16) == "uint16"
    assert codec.dtype_name(DataType.DATA_TYPE_UNSPECIFIED) == "DATA_TYPE_UNSPECIFIED"
    assert codec.dtype_name(99) == "unknown (99)"
    assert codec.dtype_from_name("bool") == DataType.DATA_TYPE_BOOL
    assert codec.numpy_dtype(DataType.DATA_TYPE_STRING) == codec.STRING_DTYPE
    with pytest.raises(TensorCodecError, match="unsupported dtype 'bfloat16'"):
        codec.dtype_from_name("bfloat16")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (Tensor(shape=[1], float_values=[1]), "x: dtype is DATA_TYPE_UNSPECIFIED; set one of bool, float16"),
        (Tensor(dtype=99, shape=[1]), "x: dtype is unknown (99)"),
        (Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2, -1]), "x: shape [2, -1] has a negative dimension"),
        (Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1] * 33, float_values=[1]), "33 dimensions, more than 32"),
        (Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2**62, 2**62, 0]), "x: shape [4611686018427387904, "),
        (
            Tensor(dtype=DataType.DATA_TYPE_INT32, shape=[2, 2], int_values=[1, 2, 3]),
            "x: shape [2, 2] needs 4 values, got 3 in int_values",
        ),
        (
            Tensor(dtype=DataType.DATA_TYPE_INT64, shape=[1], raw_contents=b"\0" * 7),
            "x: shape [1] of int64 needs 8 raw bytes, got 7 in raw_contents",
        ),
        (
            Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1], float_values=[1], raw_contents=b"\0" * 4),
            "x: raw_contents and float_values are both set; use one encoding",
        ),
        (
            Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1], float_values=[1], double_values=[1]),
            "x: values given in both float_values and double_values; use one field",
        ),
        (
            Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1], double_values=[1]),
            "x: dtype float32 takes its values in float_values, not double_values",
        ),
        (
            Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[1], float_values=[1]),
            "x: dtype string takes its values in string_values or bytes_values",
        ),
        (
            Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[2], string_values=["a"]),
            "x: shape [2] needs 2 strings, got 1 in string_values",
        ),
        (Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[1], raw_contents=b"\5\0\0\0ab"), "element 0 in raw_contents"),
        (Tensor(dtype=DataType.DATA_TYPE_STRING, shape=[1], raw_contents=b"\5\0"), "end inside a length prefix"),
        (Tensor(dtype=DataType.DATA_TYPE_INT8, shape=[1], int_values=[-129]), "outside the range of int8 [-128, 127]"),
        (Tensor(dtype=DataType.DATA_TYPE_INT8, shape=[1], int_values=[128]), "outside the range of int8 [-128, 127]"),
        (Tensor(dtype=DataType.DATA_TYPE_INT16, shape=[1], int_values=[-32769]), "range of int16 [-32768, 32767]"),
        (Tensor(dtype=DataType.DATA_TYPE_INT16, shape=[1], int_values=[32768]), "range of int16 [-32768, 32767]"),
        (Tensor(dtype=DataType.DATA_TYPE_UINT8, shape=[1], int_values=[-1]), "outside the range of uint8 [0, 255]"),
        (Tensor(dtype=DataType.DATA_TYPE_UINT8, shape=[1], int_values=[256]), "outside the range of uint8 [0, 255]"),
        (Tensor(dtype=DataType.DATA_TYPE_UINT16, shape=[1], int_values=[-1]), "range of uint16 [0, 65535]"),
        (Tensor(dtype=DataType.DATA_TYPE_UINT16, shape=[1], int_values=[65536]), "range of uint16 [0, 65535]"),
        (
            Tensor(dtype=DataType.DATA_TYPE_UINT32, shape=[1], uint64_values=[2**32]),
            "x: a value is outside the range of uint32 [0, 4294967295]",
        ),
    ],
)
def test_v1_malformed_tensors(tensor: Tensor, message: str) -> None:
    with pytest.raises(TensorCodecError, match=re.escape(message)):
        codec.decode(tensor, "x")


# KServe v2


def kserve_request(datatype: str, shape: list[int], raw: bytes | None = None, **contents: list) -> ModelInferRequest:
    """A request with one input "x", its values in ``raw`` or in the named contents fields."""
    request = ModelInferRequest(raw_input_contents=[] if raw is None else [raw])
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(InferTensorContents(**contents))
    return request


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_kserve_round_trip(array: np.ndarray, raw: bool) -> None:
    """``array`` encoded as a response's output, sent back as a request's input, and decoded."""
    response = ModelInferResponse()
    encode_outputs(response, {"x": array}, raw)
    output = response.outputs[0]
    request = ModelInferRequest(raw_input_contents=response.raw_output_contents)
    tensor = request.inputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
    if not response.raw_output_contents:
        tensor.contents.CopyFrom(output.contents)
    inputs, was_raw = decode_inputs(request)
    assert was_raw == (raw or array.dtype == np.float16)  # FP16 has no typed field: it always travels raw
    assert_same(inputs["x"], array)


def test_kserve_fp16_output_sends_every_output_raw() -> None:
    response = ModelInferResponse()
    encode_outputs(response, {"half": np.ones(2, np.float16), "full": np.ones(2, np.float32)}, raw=False)
    assert len(response.raw_output_contents) == 2
    assert not any(output.HasField("contents") for output in response.outputs)


def test_kserve_datatypes_of_metadata() -> None:
    assert datatype_of(DataType.DATA_TYPE_FLOAT32) == "FP32"
    assert datatype_of(DataType.DATA_TYPE_STRING) == "BYTES"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (kserve_request("BF16", [1], raw=b"\0\0"), "input 'x': datatype 'BF16' is not supported; use one of ['BOOL'"),
        (kserve_request("FP32", [2, -1], raw=b""), "input 'x': shape [2, -1] has a negative dimension"),
        (kserve_request("FP32", [1] * 33, raw=b"\0" * 4), "33 dimensions, more than 32"),
        (kserve_request("FP32", [2**62, 2**62, 0], raw=b""), "is too large"),
        (
            kserve_request("FP32", [1], raw=b"\0" * 4, fp32_contents=[1.0]),
            "input 'x': contents and raw_input_contents are both set; use one",
        ),
        (
            kserve_request("FP32", [1, 2], raw=b"\0" * 4),
            "input 'x': shape [1, 2] of float32 needs 8 raw bytes, got 4 in raw_input_contents",
        ),
        (kserve_request("BYTES", [1], raw=b"\5\0\0\0ab"), "raw string element 0 in raw_input_contents is cut short"),
        (kserve_request("BYTES", [1], raw=b"\5\0"), "end inside a length prefix"),
        (kserve_request("FP16", [1], fp32_contents=[1.0]), "input 'x': FP16 values travel only in raw_input_contents"),
        (
            kserve_request("FP32", [1], int_contents=[1]),
            "input 'x': FP32 takes its values in contents.fp32_contents, not ['int_contents']",
        ),
        (
            kserve_request("FP32", [1], fp32_contents=[1.0], int_contents=[1]),
            "FP32 takes its values in contents.fp32_contents",
        ),
        (
            kserve_request("INT32", [2, 2], int_contents=[1, 2, 3]),
            "input 'x': shape [2, 2] needs 4 values, got 3 in int_contents",
        ),
        (kserve_request("BYTES", [2], bytes_contents=[b"a"]), "needs 2 strings, got 1 in bytes_contents"),
        (kserve_request("INT8", [2], int_contents=[-129, 0]), "outside the range of int8 [-128, 127]"),
        (kserve_request("INT8", [2], int_contents=[0, 128]), "outside the range of int8 [-128, 127]"),
        (kserve_request("INT16", [1], int_contents=[-32769]), "outside the range of int16 [-32768, 32767]"),
        (kserve_request("INT16", [1], int_contents=[32768]), "outside the range of int16 [-32768, 32767]"),
        (kserve_request("UINT8", [1], uint_contents=[256]), "outside the range of uint8 [0, 255]"),
        (kserve_request("UINT16", [1], uint_contents=[65536]), "outside the range of uint16 [0, 65535]"),
    ],
)
def test_kserve_malformed_inputs(request_: ModelInferRequest, message: str) -> None:
    with pytest.raises(TensorCodecError, match=re.escape(message)):
        decode_inputs(request_)


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("INT8", "int_contents", [-128, 127]),
        ("INT16", "int_contents", [-32768, 32767]),
        ("UINT8", "uint_contents", [0, 255]),
        ("UINT16", "uint_contents", [0, 65535]),
        ("UINT32", "uint_contents", [0, 2**32 - 1]),
    ],
)
def test_kserve_narrow_integers_accept_their_whole_range(datatype: str, field: str, values: list[int]) -> None:
    inputs, _ = decode_inputs(kserve_request(datatype, [2], **{field: values}))
    assert_same(inputs["x"], np.array(values, tensors.BY_V2[datatype].numpy))


def test_kserve_request_level_errors() -> None:
    request = kserve_request("FP32", [1], raw=b"\0" * 4)
    request.raw_input_contents.append(b"")
    with pytest.raises(TensorCodecError, match="raw_input_contents has 2 entries for 1 inputs; give one per input"):
        decode_inputs(request)
    twice = kserve_request("FP32", [1], fp32_contents=[1.0])
    twice.inputs.add().CopyFrom(twice.inputs[0])
    with pytest.raises(TensorCodecError, match="input 'x' is given twice"):
        decode_inputs(twice)
    shared = kserve_request("FP32", [1])
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(TensorCodecError, match="input 'x': shared-memory inputs are not supported"):
        decode_inputs(shared)


# TF Serving

MAX_ELEMENTS = 1000
TF_NAMES = {
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}


def tf_proto(dtype: int, shape: list[int], **fields: object) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **fields)


def tf_decode(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    return tfserving_codec.decode(tensor, "x", MAX_ELEMENTS)


def test_the_tensorflow_column_holds_the_types_proto_values() -> None:
    assert {dtype.name: types_pb2.DataType.Name(dtype.tf) for dtype in tensors.DTYPES} == TF_NAMES
    assert {dtype.name: dtype.tf_name for dtype in tensors.DTYPES} == TF_NAMES  # the names TF Serving's REST prints
    assert tfserving_codec.tf_dtype_of(DataType.DATA_TYPE_FLOAT16) == types_pb2.DT_HALF


def test_tfserving_typed_round_trip(array: np.ndarray) -> None:
    tensor = tensor_pb2.TensorProto()
    tfserving_codec.encode_into(array, tensor)
    assert not tensor.tensor_content
    assert_same(tf_decode(tensor_pb2.TensorProto.FromString(tensor.SerializeToString())), array)


def test_tfserving_tensor_content_round_trip(array: np.ndarray) -> None:
    dtype = tensors.dtype_of_array(array)
    content = tensors.to_raw(array, dtype)
    tensor = tf_proto(dtype.tf, list(array.shape), tensor_content=content)
    if dtype.is_string:  # TensorFlow keeps strings in string_val only
        with pytest.raises(TensorCodecError, match=f"needs string_val, got {len(content)} bytes of tensor_content"):
            tf_decode(tensor)
        return
    assert_same(tf_decode(tensor), array)


def test_tfserving_fewer_values_repeat_the_last_and_none_are_zeros() -> None:
    assert tf_decode(tf_proto(types_pb2.DT_INT32, [2, 2], int_val=[1, 2])).tolist() == [[1, 2], [2, 2]]
    assert tf_decode(tf_proto(types_pb2.DT_FLOAT, [3])).tolist() == [0, 0, 0]
    assert tf_decode(tf_proto(types_pb2.DT_STRING, [2])).tolist() == [b"", b""]
    assert tf_decode(tf_proto(types_pb2.DT_STRING, [2], string_val=[b"a"])).tolist() == [b"a", b"a"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            tf_proto(types_pb2.DT_COMPLEX64, [1]),
            "x: dtype DT_COMPLEX64 is not supported; use one of ['DT_BOOL', 'DT_DOUBLE'",
        ),
        (tf_proto(999, [1]), "x: dtype 999 is not supported"),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
            ),
            "x: tensor_shape has an unknown rank; give its dimensions",
        ),
        (tf_proto(types_pb2.DT_FLOAT, [2, -1]), "x: shape [2, -1] has a negative dimension"),
        (tf_proto(types_pb2.DT_FLOAT, [1] * 33), "x: shape has 33 dimensions, more than 32"),
        (tf_proto(types_pb2.DT_FLOAT, [2**62, 2**62, 0]), "is too large"),
        (
            tf_proto(types_pb2.DT_FLOAT, [4], tensor_content=b"\0" * 8),
            "x: shape [4] of float32 needs 16 raw bytes, got 8 in tensor_content",
        ),
        (
            tf_proto(types_pb2.DT_STRING, [1], tensor_content=b"\1\0\0\0a"),
            "x: shape [1] needs string_val, got 5 bytes of tensor_content",
        ),
        (tf_proto(types_pb2.DT_INT32, [2], int_val=[1, 2, 3]), "x: shape [2] holds 2 values, got 3 in int_val"),
        (tf_proto(types_pb2.DT_INT32, [1001], int_val=[1]), "x has 1001 elements, more than the limit of 1000"),
        (tf_proto(types_pb2.DT_INT8, [1], int_val=[-129]), "x: a value is outside the range of int8 [-128, 127]"),
        (tf_proto(types_pb2.DT_INT8, [1], int_val=[128]), "outside the range of int8 [-128, 127]"),
        (tf_proto(types_pb2.DT_INT16, [1], int_val=[-32769]), "outside the range of int16 [-32768, 32767]"),
        (tf_proto(types_pb2.DT_INT16, [1], int_val=[32768]), "outside the range of int16 [-32768, 32767]"),
        (tf_proto(types_pb2.DT_UINT8, [1], int_val=[-1]), "outside the range of uint8 [0, 255]"),
        (tf_proto(types_pb2.DT_UINT8, [1], int_val=[256]), "outside the range of uint8 [0, 255]"),
        (tf_proto(types_pb2.DT_UINT16, [1], int_val=[-1]), "outside the range of uint16 [0, 65535]"),
        (tf_proto(types_pb2.DT_UINT16, [1], int_val=[65536]), "outside the range of uint16 [0, 65535]"),
        (tf_proto(types_pb2.DT_HALF, [1], half_val=[65536]), "outside the range of uint16 [0, 65535]"),
    ],
)
def test_tfserving_malformed_tensors(tensor: tensor_pb2.TensorProto, message: str) -> None:
    with pytest.raises(TensorCodecError, match=re.escape(message)):
        tf_decode(tensor)


def test_tfserving_all_values_given_is_not_bound_by_the_limit() -> None:
    """The element limit is for repeating the last value; values the request carries are allowed whatever their
    number."""
    assert tf_decode(tf_proto(types_pb2.DT_INT8, [1001], int_val=[1] * 1001)).shape == (1001,)
