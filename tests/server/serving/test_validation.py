"""Every refusal of a request's decoded inputs, with the message the caller reads, and what passes."""

from __future__ import annotations

import numpy as np
import pytest

from tensorgate.server.errors import InvalidArgumentError
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.server.serving.validation import Limits, validate_inputs, validate_output_filter
from tensorgate.v1.tensor_pb2 import DataType

SIGNATURE = Signature(
    name="serving_default",
    inputs={
        "image": TensorInfo("image", DataType.DATA_TYPE_FLOAT32, (-1, 2, 2)),
        "tag": TensorInfo("tag", DataType.DATA_TYPE_STRING, (-1,)),
    },
    outputs={"score": TensorInfo("score", DataType.DATA_TYPE_FLOAT32, (-1,))},
)
LIMITS = Limits(max_examples=8, max_tensor_elements=64, reject_non_finite=True)


def inputs(batch: int = 2, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    valid = {"image": np.zeros((batch, 2, 2), np.float32), "tag": np.array([b"a"] * batch, dtype=object)}
    return {**valid, **overrides}


def refusal(given: dict[str, np.ndarray], limits: Limits = LIMITS, signature: Signature = SIGNATURE) -> str:
    with pytest.raises(InvalidArgumentError) as raised:
        validate_inputs(signature, given, limits)
    return str(raised.value)


def test_valid_inputs_return_their_batch_size() -> None:
    assert validate_inputs(SIGNATURE, inputs(batch=3), LIMITS) == 3


def test_a_signature_of_scalars_has_a_batch_of_one() -> None:
    scalar = Signature("s", {"t": TensorInfo("t", DataType.DATA_TYPE_INT64, ())}, {})
    assert validate_inputs(scalar, {"t": np.array(5, np.int64)}, LIMITS) == 1


def test_an_unknown_rank_accepts_any_shape() -> None:
    any_rank = Signature("s", {"t": TensorInfo("t", DataType.DATA_TYPE_INT32, None)}, {})
    assert validate_inputs(any_rank, {"t": np.zeros((4, 3, 2), np.int32)}, LIMITS) == 4


def test_missing_and_unknown_inputs_are_named() -> None:
    given = {"image": inputs()["image"], "colour": np.zeros(2, np.float32)}
    assert refusal(given) == (
        "inputs ['colour', 'image'] do not match the signature: expected ['image', 'tag']; "
        "missing ['tag']; unknown ['colour']"
    )
    assert refusal({"image": inputs()["image"]}).endswith("expected ['image', 'tag']; missing ['tag']")


def test_wrong_dtype() -> None:
    message = refusal(inputs(image=np.zeros((2, 2, 2), np.float64)))
    assert message == "input 'image': expected dtype float32, got float64"


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((2, 2, 3), "expected shape [-1, 2, 2], got [2, 2, 3]"), ((2, 4), "expected shape [-1, 2, 2], got [2, 4]")],
)
def test_wrong_shape_or_rank(shape: tuple[int, ...], expected: str) -> None:
    assert refusal(inputs(image=np.zeros(shape, np.float32))) == f"input 'image': {expected}"


def test_empty_input() -> None:
    message = refusal(inputs(batch=0))
    assert message == "input 'image' is empty (shape [0, 2, 2]); send at least one example"


def test_too_many_elements() -> None:
    limits = Limits(max_examples=100, max_tensor_elements=16, reject_non_finite=True)
    message = refusal(inputs(batch=5), limits)
    assert message == "input 'image' has 20 elements, more than the limit of 16"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_when_configured(value: float) -> None:
    image = np.zeros((2, 2, 2), np.float32)
    image[1, 0, 1] = value
    assert refusal(inputs(image=image)) == "input 'image' contains NaN or infinite values"
    allowed = Limits(max_examples=8, max_tensor_elements=64, reject_non_finite=False)
    assert validate_inputs(SIGNATURE, inputs(image=image), allowed) == 2


def test_inputs_must_agree_on_the_batch_size() -> None:
    given = inputs(tag=np.array([b"a"] * 3, dtype=object))
    assert refusal(given) == "inputs disagree on the batch size (first dimension): [2, 3]"


def test_too_many_examples() -> None:
    assert refusal(inputs(batch=9)) == "batch of 9 examples exceeds the limit of 8"


def test_a_long_input_name_is_quoted_short() -> None:
    name = "n" * 500
    signature = Signature("s", {name: TensorInfo(name, DataType.DATA_TYPE_FLOAT32, (-1,))}, {})
    message = refusal({name: np.zeros(1, np.int32)}, signature=signature)
    assert "... (500 characters)" in message and len(message) < 300


def test_output_filter() -> None:
    validate_output_filter(SIGNATURE, ["score"])
    validate_output_filter(SIGNATURE, [])
    with pytest.raises(InvalidArgumentError) as raised:
        validate_output_filter(SIGNATURE, ["score", "colour"])
    assert str(raised.value) == "unknown outputs ['colour'] in output_filter; outputs are ['score']"
