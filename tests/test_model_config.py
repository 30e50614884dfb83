"""Per-model configuration, version policies and the signature-compatibility rule (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tensorgate.server.config import BatchingConfig
from tensorgate.server.models.model_config import ModelConfig, ModelConfigError, load_model_config
from tensorgate.server.runtimes.signature import Signature, TensorInfo, breaking_changes
from tensorgate.v1.tensor_pb2 import DataType

F32, I64 = DataType.DATA_TYPE_FLOAT32, DataType.DATA_TYPE_INT64


def test_file_overrides_server_defaults_key_by_key(tmp_path: Path) -> None:
    defaults = ModelConfig(batching=BatchingConfig(max_batch_size=64, max_queue_size=10))
    (tmp_path / "model.toml").write_text(
        "latest_count = 3\nlabels = {stable = 2}\nruntime = 'tflite'\n[batching]\nmax_batch_size = 8\n"
    )
    config = load_model_config(tmp_path, defaults)
    assert (config.runtime, defaults.runtime) == ("tflite", "auto")
    assert (config.batching.max_batch_size, config.batching.max_queue_size) == (8, 10)
    assert (config.latest_count, config.labels) == (3, {"stable": 2})
    assert load_model_config(tmp_path / "missing", defaults) == defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version_policy = 'newest'\n", "version_policy"),
        ("version_policy = 'specific'\n", "needs specific_versions"),
        ("labels = {'7' = 1}\n", "not a number"),
        ("[batching]\nmax_batch_size = 0\n", "max_batch_size"),
        ("device = 'tpu'\n", "device"),
        ("runtime = 'onnx'\n", "runtime"),
        ("colour = 'blue'\n", "colour"),
        ("latest_count = \n", "model.toml"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "model.toml").write_text(text)
    with pytest.raises(ModelConfigError, match=message):
        load_model_config(tmp_path, ModelConfig())


def test_version_policies() -> None:
    on_disk = [1, 2, 5, 7]
    assert ModelConfig().wanted(on_disk) == {7}
    assert ModelConfig(latest_count=2).wanted(on_disk) == {5, 7}
    assert ModelConfig(version_policy="all").wanted(on_disk) == {1, 2, 5, 7}
    assert ModelConfig(version_policy="specific", specific_versions=(2, 9)).wanted(on_disk) == {2}


def signature(inputs: dict[str, tuple[int, tuple[int, ...] | None]], outputs: dict[str, int]) -> Signature:
    return Signature(
        "serving_default",
        {name: TensorInfo(name, dtype, shape) for name, (dtype, shape) in inputs.items()},
        {name: TensorInfo(name, dtype, (-1,)) for name, dtype in outputs.items()},
    )


def test_breaking_changes() -> None:
    current = signature({"x": (F32, (-1, 28, 28))}, {"y": F32})
    assert breaking_changes(current, signature({"x": (F32, (-1, 28, 28))}, {"y": F32, "extra": I64})) == []
    assert breaking_changes(current, signature({"x": (F32, (-1, -1, 28))}, {"y": F32})) == []
    assert breaking_changes(current, signature({"x": (I64, (-1, 28, 28))}, {"y": F32})) == [
        "input 'x' changed from float32[-1, 28, 28] to int64[-1, 28, 28]"
    ]
    assert breaking_changes(current, signature({"x": (F32, (-1, 784))}, {})) == [
        "input 'x' changed from float32[-1, 28, 28] to float32[-1, 784]",
        "output 'y' removed",
    ]
    assert breaking_changes(current, signature({"x": (F32, (-1, 28, 28)), "z": (F32, (-1,))}, {"y": F32})) == [
        "new input 'z'"
    ]
