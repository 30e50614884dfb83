"""The REST protocols' tensors without a server: every v2 datatype from JSON ``data`` (flat and nested) and from
the binary tensor extension, read back exactly; values of the wrong kind, out of range or of the wrong count are
refused with the tensor's name; TF Serving's JSON takes each dtype's values and ``b64`` bytes.

``test_cases_in_processes_of_their_own.py`` runs these cases in a process of their own (see there why)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tensorgate.server.protocols.rest.kserve_v2 import _decode_inputs, array_from_json
from tensorgate.server.protocols.rest.tfserving import _decode_value, _output_json
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.v1 import tensors
from tensorgate.v1.tensors import TensorCodecError

VALUES: dict[str, Any] = {
    "FP16": [[0.5, -2.0], [1024.0, 0.0]],
    "FP32": [[0.25, -1.5], [3.0e38, 0.0]],
    "FP64": [[1e-300, -2.5], [1e300, 0.0]],
    "INT8": [[-128, 127], [0, 1]],
    "INT16": [[-32768, 32767], [0, 1]],
    "INT32": [[-(2**31), 2**31 - 1], [0, 1]],
    "INT64": [[-(2**63), 2**63 - 1], [0, 1]],
    "UINT8": [[0, 255], [1, 2]],
    "UINT16": [[0, 65535], [1, 2]],
    "UINT32": [[0, 2**32 - 1], [1, 2]],
    "UINT64": [[0, 2**64 - 1], [1, 2]],
    "BOOL": [[True, False], [False, True]],
    "BYTES": [["abc", ""], ["h\u00e9llo", "x"]],
}


def expected(datatype: str) -> np.ndarray:
    dtype = tensors.BY_V2[datatype]
    values = VALUES[datatype]
    if dtype.is_string:
        return tensors.object_array([v.encode() for row in values for v in row], (2, 2))
    return np.array(values, dtype=dtype.numpy)


@pytest.mark.parametrize("datatype", sorted(VALUES))
def test_every_datatype_from_json_data_flat_and_nested(datatype: str) -> None:
    dtype, want = tensors.BY_V2[datatype], expected(datatype)
    nested = array_from_json(json.loads(json.dumps(VALUES[datatype])), dtype, (2, 2), "input 'x'")
    flat_values = [v for row in VALUES[datatype] for v in row]
    flat = array_from_json(json.loads(json.dumps(flat_values)), dtype, (2, 2), "input 'x'")
    for got in (nested, flat):
        assert got.shape == (2, 2) and tensors.dtype_of_array(got) is dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("datatype", sorted(VALUES))
def test_every_datatype_from_binary_data(datatype: str) -> None:
    dtype, want = tensors.BY_V2[datatype], expected(datatype)
    raw = tensors.to_raw(want, dtype)
    infer = {
        "inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "parameters": {"binary_data_size": len(raw)}}]
    }
    got = _decode_inputs(infer, memoryview(raw))["x"]
    assert tensors.dtype_of_array(got) is dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT8", [128, 0, 0, 0], "range"),
        ("UINT8", [-1, 0, 0, 0], "range"),
        ("UINT64", [2**64, 0, 0, 0], "range"),
        ("INT64", [-(2**63) - 1, 0, 0, 0], "range"),
        ("INT32", [1, None, 0, 0], "takes integers"),
        ("UINT64", [2**64 - 1, 0.5, 0, 0], "takes integers"),
        ("INT32", [0.5, 0, 0, 0], "takes integers"),
        ("BOOL", [1, 0, 1, 0], "true or false"),
        ("FP32", ["1", 0, 0, 0], "takes numbers"),
        ("BYTES", [1, "a", "b", "c"], "strings"),
        ("FP32", [0.0, 0.0, 0.0], "needs 4 values, got 3"),
        ("FP32", 5, "'data' must be a list"),
    ],
)
def test_wrong_values_are_refused_with_the_tensors_name(datatype: str, data: Any, message: str) -> None:
    with pytest.raises(TensorCodecError, match=message) as raised:
        array_from_json(data, tensors.BY_V2[datatype], (2, 2), "input 'x'")
    assert "input 'x'" in str(raised.value)


def test_binary_inputs_take_their_share_in_order_and_the_sizes_must_add_up() -> None:
    a, b = np.arange(4, dtype=np.float32), np.array([7, 8], dtype=np.int64)
    infer = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
            {"name": "json", "datatype": "INT32", "shape": [1], "data": [3]},
            {"name": "b", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        ]
    }
    decoded = _decode_inputs(infer, memoryview(a.tobytes() + b.tobytes()))
    np.testing.assert_array_equal(decoded["a"], a)
    np.testing.assert_array_equal(decoded["b"], b)
    assert decoded["json"].tolist() == [3]
    with pytest.raises(TensorCodecError, match="add up to 32"):
        _decode_inputs(infer, memoryview(a.tobytes() + b.tobytes() + b"\0"))
    with pytest.raises(TensorCodecError, match="runs past"):
        _decode_inputs(infer, memoryview(a.tobytes()))


@pytest.mark.parametrize("name", sorted(tensors.BY_NAME))
def test_tf_serving_json_takes_each_dtype(name: str) -> None:
    dtype = tensors.BY_NAME[name]
    info = TensorInfo("x", dtype.v1, (None, 2))
    datatype = dtype.v2
    values: Any = VALUES[datatype]
    if dtype.is_string:
        values = [["abc", {"b64": "/wA="}], ["h\u00e9llo", "x"]]
    got = _decode_value(json.loads(json.dumps(values)), info, "input 'x'")
    assert tensors.dtype_of_array(got) is dtype
    if dtype.is_string:
        assert got.tolist() == [[b"abc", b"\xff\x00"], ["h\u00e9llo".encode(), b"x"]]
        assert _output_json(got, "x") == [["abc", {"b64": "/wA="}], ["h\u00e9llo", "x"]]
        assert _output_json(got, "x_bytes")[0][0] == {"b64": "YWJj"}
    else:
        np.testing.assert_array_equal(got, expected(datatype))
