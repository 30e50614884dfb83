"""Which signature changes break a caller of the version being replaced: the manager refuses those."""

from __future__ import annotations

from tensorgate.server.runtimes.signature import Signature, TensorInfo, breaking_changes
from tensorgate.v1.tensor_pb2 import DataType

FLOAT, INT = DataType.DATA_TYPE_FLOAT32, DataType.DATA_TYPE_INT64


def signature(inputs: dict[str, TensorInfo], outputs: dict[str, TensorInfo]) -> Signature:
    return Signature("serving_default", inputs, outputs)


def tensor(name: str, dtype: int = FLOAT, shape: tuple[int, ...] | None = (-1, 4)) -> TensorInfo:
    return TensorInfo(name, dtype, shape)


CURRENT = signature({"x": tensor("x")}, {"y": tensor("y")})


def test_the_same_signature_and_a_new_output_break_nothing() -> None:
    assert breaking_changes(CURRENT, CURRENT) == []
    assert breaking_changes(CURRENT, signature({"x": tensor("x")}, {"y": tensor("y"), "z": tensor("z")})) == []


def test_a_dimension_of_any_size_on_either_side_is_compatible() -> None:
    assert (
        breaking_changes(CURRENT, signature({"x": tensor("x", shape=(-1, -1))}, {"y": tensor("y", shape=(8, 4))})) == []
    )


def test_every_breaking_change_is_named() -> None:
    new = signature(
        {"x": tensor("x", INT), "mask": tensor("mask")},
        {"z": tensor("z")},
    )
    assert breaking_changes(CURRENT, new) == [
        "new input 'mask'",
        "input 'x' changed from float32[-1, 4] to int64[-1, 4]",
        "output 'y' removed",
    ]


def test_shape_changes_of_rank_and_of_a_known_rank() -> None:
    new = signature({"x": tensor("x", shape=(-1, 4, 1))}, {"y": tensor("y", shape=None)})
    assert breaking_changes(CURRENT, new) == [
        "input 'x' changed from float32[-1, 4] to float32[-1, 4, 1]",
        "output 'y' changed from float32[-1, 4] to float32[any rank]",
    ]
