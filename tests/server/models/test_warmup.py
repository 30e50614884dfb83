"""The warm-up requests a version gets from its ``[warmup]`` table: zeros, seeded random data or a .npy/.npz file,
and a batch of every preferred batch size; files that do not fit the signature fail the version with the file
named. No TensorFlow: TF Serving's recorded requests are tests/test_warmup.py's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tensorgate.server.errors import ModelLoadError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import VersionPath
from tensorgate.server.models.warmup import warmup_requests
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.v1.tensor_pb2 import DataType

from support.fakes import float_signature

MIXED = Signature(
    name="serving_default",
    inputs={
        "image": TensorInfo("image", DataType.DATA_TYPE_FLOAT32, (-1, 2, -1)),
        "ids": TensorInfo("ids", DataType.DATA_TYPE_INT64, (-1,)),
        "tag": TensorInfo("tag", DataType.DATA_TYPE_STRING, (-1,)),
        "flag": TensorInfo("flag", DataType.DATA_TYPE_BOOL, (-1, 1)),
    },
    outputs={"y": TensorInfo("y", DataType.DATA_TYPE_FLOAT32, (-1,))},
)


@pytest.fixture
def version(tmp_path: Path) -> VersionPath:
    path = tmp_path / "m" / "3"
    path.mkdir(parents=True)
    return VersionPath("m", 3, path)


def config(warmup: dict[str, Any] | None = None, preferred: tuple[int, ...] = ()) -> ModelConfig:
    return ModelConfig.model_validate({"warmup": warmup or {}, "batching": {"preferred_batch_sizes": preferred}})


def shapes(requests: list[dict[str, np.ndarray]]) -> list[dict[str, tuple[int, ...]]]:
    return [{name: array.shape for name, array in request.items()} for request in requests]


def test_default_is_zeros_at_batch_one_and_every_preferred_size(version: VersionPath) -> None:
    requests = warmup_requests(version, MIXED, config(preferred=(8, 4)))
    assert [r["ids"].shape for r in requests] == [(1,), (4,), (8,)]
    assert shapes(requests)[0] == {"image": (1, 2, 1), "ids": (1,), "tag": (1,), "flag": (1, 1)}
    first = requests[0]
    assert first["image"].dtype == np.float32 and not first["image"].any()
    assert first["ids"].dtype == np.int64 and first["flag"].dtype == np.bool_
    assert first["tag"].dtype == object and first["tag"].tolist() == [b""]


def test_preferred_sizes_can_be_left_out_and_need_a_batch_dimension(version: VersionPath) -> None:
    assert len(warmup_requests(version, MIXED, config({"preferred_batch_sizes": False}, preferred=(4,)))) == 1
    fixed = float_signature(shape=(3, 2))
    assert shapes(warmup_requests(version, fixed, config(preferred=(4,)))) == [{"x": (3, 2)}]


def test_random_data_is_seeded_and_of_the_signature_dtypes(version: VersionPath) -> None:
    first = warmup_requests(version, MIXED, config({"inputs": "random"}, preferred=(16,)))
    again = warmup_requests(version, MIXED, config({"inputs": "random"}, preferred=(16,)))
    assert [r["ids"].shape for r in first] == [(1,), (16,)]
    batch = first[1]
    assert batch["image"].dtype == np.float32 and batch["image"].std() > 0
    assert ((batch["image"] >= 0) & (batch["image"] < 1)).all()
    assert batch["ids"].dtype == np.int64 and set(batch["ids"].tolist()) <= {0, 1}
    assert batch["flag"].dtype == np.bool_ and batch["tag"].tolist() == [b""] * 16
    for ours, theirs in zip(first, again, strict=True):
        for name in MIXED.inputs:
            np.testing.assert_array_equal(ours[name], theirs[name])


def test_npy_file_in_the_model_directory_with_rows_repeated_to_preferred_sizes(version: VersionPath) -> None:
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(version.path.parent / "warm.npy", rows)
    requests = warmup_requests(version, float_signature(), config({"inputs": "warm.npy"}, preferred=(2, 5)))
    np.testing.assert_array_equal(requests[0]["x"], rows)
    np.testing.assert_array_equal(requests[1]["x"], rows[:2])
    np.testing.assert_array_equal(requests[2]["x"], rows[[0, 1, 2, 0, 1]])


def test_npz_file_in_the_version_directory_comes_first_and_text_becomes_bytes(version: VersionPath) -> None:
    arrays = {
        "image": np.ones((2, 2, 5), np.float32),
        "ids": np.array([7, 9]),
        "tag": np.array(["a", "bé"]),
        "flag": np.array([[True], [False]]),
    }
    np.savez(version.path / "warm.npz", **arrays)
    np.savez(version.path.parent / "warm.npz", **{**arrays, "ids": np.array([0, 0])})
    (request,) = warmup_requests(version, MIXED, config({"inputs": "warm.npz"}))
    assert request["ids"].tolist() == [7, 9]
    assert request["tag"].dtype == object and request["tag"].tolist() == [b"a", "bé".encode()]


@pytest.mark.parametrize(
    ("arrays", "error"),
    [
        ({"x": np.zeros((2, 3), np.float64)}, r"input 'x' is float64\[2, 3\], the signature takes float32\[-1, -1\]"),
        ({"x": np.zeros(3, np.float32)}, r"input 'x' is float32\[3\], the signature takes float32\[-1, -1\]"),
        ({"x": np.zeros((2, 3), np.float32), "z": np.zeros(1)}, r"inputs \['x', 'z'\] do not match .* \['x'\]"),
        ({"x": np.zeros((0, 3), np.float32)}, "holds no examples"),
    ],
)
def test_a_file_that_does_not_fit_the_signature_names_itself(
    version: VersionPath, arrays: dict[str, np.ndarray], error: str
) -> None:
    np.savez(version.path / "warm.npz", **arrays)
    where = re.escape(f"warm-up inputs file {version.path / 'warm.npz'}: ")
    with pytest.raises(ModelLoadError, match=rf"^{where}.*{error}"):
        warmup_requests(version, float_signature(), config({"inputs": "warm.npz"}))


def test_missing_corrupt_pickled_and_single_array_for_many_inputs(version: VersionPath) -> None:
    with pytest.raises(ModelLoadError, match=r"^warm-up inputs file 'warm.npy' is in neither .*/m/3 nor .*/m$"):
        warmup_requests(version, float_signature(), config({"inputs": "warm.npy"}))
    (version.path / "warm.npy").write_bytes(b"not numpy")
    with pytest.raises(ModelLoadError, match=r"^warm-up inputs file .*warm.npy: "):
        warmup_requests(version, float_signature(), config({"inputs": "warm.npy"}))
    np.save(version.path / "warm.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelLoadError, match=r"^warm-up inputs file .*warm.npy: .*pickle"):
        warmup_requests(version, float_signature(), config({"inputs": "warm.npy"}))
    np.save(version.path / "warm.npy", np.zeros((1, 2), np.float32))
    with pytest.raises(ModelLoadError, match=r"a \.npy file holds one input, the signature takes \['a', 'b'\]"):
        warmup_requests(version, float_signature(inputs=("a", "b")), config({"inputs": "warm.npy"}))


@pytest.mark.parametrize("inputs", ["../warm.npy", "sub/warm.npz", ".npy", "warm.txt", "ones"])
def test_inputs_name_zeros_random_or_a_numpy_file_beside_the_model(inputs: str) -> None:
    with pytest.raises(ValidationError, match=r"warm-up inputs must be zeros, random, or a \.npy/\.npz file name"):
        config({"inputs": inputs})


def test_count_is_bounded() -> None:
    with pytest.raises(ValidationError, match="count"):
        config({"count": 0})
