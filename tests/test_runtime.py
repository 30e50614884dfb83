"""Runtimes in process: TensorFlow (flat call) and TFLite agree with the SavedModel's own signature, the runtime
choice per model, and the TFLite conversion cache (rebuilt when stale or corrupt, never served so)."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc_tools.protoc  # noqa: F401  (before TensorFlow, as in test_tfserving.py: test_contracts.py runs protoc)
import numpy as np
import pytest
import tensorflow as tf

from tensorgate.clients.datasets import MnistData
from tensorgate.server.config import Runtime
from tensorgate.server.errors import InvalidArgumentError, ModelLoadError
from tensorgate.server.models.loader import load_version
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import VersionPath
from tensorgate.server.runtimes.signature import Servable
from tensorgate.server.runtimes.tflite import CACHE_DIR_NAME, convert

from conftest import build_checking_model, build_scorer_model, mnist_inputs

BATCH = 256


def build_scaling_model(path: Path, factor: float, input_name: str = "x") -> None:
    """y = x * factor: a tiny float32 model that converts in a moment."""

    class Scale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name=input_name)])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * factor}

    module = Scale()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_determinant_model(path: Path) -> None:
    """A float32 model whose one op (MatrixDeterminant) has no TFLite builtin."""

    class Determinant(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32, name="m")])
        def serve(self, m: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"det": tf.linalg.det(m)}

    module = Determinant()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def load(path: Path, runtime: Runtime) -> Servable:
    return load_version(VersionPath("model", 1, path), "serving_default", ModelConfig(device="cpu", runtime=runtime))


def fallback_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.fields["reason"] for r in caplog.records if r.getMessage() == "tflite not used"]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def mnist_version(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the trained MNIST version (the runtimes write their cache beside it)."""
    path = tmp_path_factory.mktemp("runtime") / "mnist" / "1"
    shutil.copytree(repository / "mnist" / "1", path)
    return path


@pytest.fixture(scope="module")
def signature_classes(mnist_version: Path, mnist: MnistData) -> np.ndarray:
    """Classes of the 10,000 test images from the SavedModel's signature called by keyword, as TensorFlow means."""
    signature = tf.saved_model.load(str(mnist_version)).signatures["serving_default"]
    x = mnist_inputs(mnist.x_test)
    batches = [signature(keras_tensor=tf.constant(x[i : i + BATCH]))["output_0"] for i in range(0, len(x), BATCH)]
    return np.concatenate([b.numpy() for b in batches]).argmax(axis=1)


@pytest.mark.parametrize("runtime", ["tensorflow", "tflite"])
def test_every_runtime_classifies_the_test_set_like_the_signature(
    mnist_version: Path, mnist: MnistData, signature_classes: np.ndarray, runtime: Runtime
) -> None:
    servable = load_version(
        VersionPath("mnist", 1, mnist_version), "serving_default", ModelConfig(device="cpu", runtime=runtime)
    )
    assert (servable.runtime, servable.device) == (runtime, "CPU:0")
    assert servable.call_seconds > 0
    x = mnist_inputs(mnist.x_test)  # the last batch is smaller: the TFLite runner resizes
    outputs = [servable.predict({"keras_tensor": x[i : i + BATCH]})["output_0"] for i in range(0, len(x), BATCH)]
    classes = np.concatenate(outputs).argmax(axis=1)
    assert classes.shape == (10_000,)
    np.testing.assert_array_equal(classes, signature_classes)


def test_auto_serves_mnist_with_tflite(mnist_version: Path) -> None:
    servable = load_version(VersionPath("mnist", 1, mnist_version), "serving_default", ModelConfig(device="cpu"))
    assert servable.runtime == "tflite"


def test_the_tensorflow_path_serves_every_dtype(tmp_path: Path) -> None:
    build_scorer_model(tmp_path / "scorer")
    servable = load(tmp_path / "scorer", "tensorflow")
    outputs = servable.predict(
        {
            "counts": np.array([[1, 2], [3, 4]], np.int32),
            "features": np.array([[1.5, -2, 3], [-1, 0, 0]], np.float64),
            "tag": np.array([b"abc", b""], object),
        }
    )
    np.testing.assert_array_equal(outputs["scaled"], [[3.0, -4, 6], [-2, 0, 0]])
    np.testing.assert_array_equal(outputs["tag_length"], [3, 0])
    np.testing.assert_array_equal(outputs["total"], np.array([3, 7], np.int64))
    np.testing.assert_array_equal(outputs["positive"], [True, False])
    assert outputs["total"].dtype == np.int64


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (build_scorer_model, "TFLite serves no string or float64 tensors: input 'features' is float64"),
        (build_determinant_model, "TFLite has no builtin op for MatrixDeterminant"),
        (build_checking_model, "the model checks its inputs with Assert ops, which TFLite drops"),
    ],
)
def test_models_tflite_cannot_run_fall_back_under_auto_and_are_refused_under_tflite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, build: Callable[[Path], None], reason: str
) -> None:
    build(tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="tensorgate.server.models.loader"):
        servable = load(tmp_path / "model", "auto")
    assert servable.runtime == "tensorflow"
    [logged] = fallback_reasons(caplog)
    assert logged.startswith(reason)
    with pytest.raises(ModelLoadError, match=f"runtime tflite: {reason}"):
        load(tmp_path / "model", "tflite")


def test_an_input_the_model_rejects_is_invalid_argument(tmp_path: Path) -> None:
    build_checking_model(tmp_path / "model")
    servable = load(tmp_path / "model", "auto")
    np.testing.assert_array_equal(servable.predict({"x": np.ones((1, 4), np.float32)})["y"], [[2.0] * 4])
    with pytest.raises(InvalidArgumentError, match="x must be non-negative"):
        servable.predict({"x": -np.ones((1, 4), np.float32)})


def test_a_shipped_model_tflite_is_served(tmp_path: Path) -> None:
    """As TF Serving's --prefer_tflite_model: the version's own model.tflite, not a conversion."""
    build_scaling_model(tmp_path / "model", 2.0)
    build_scaling_model(tmp_path / "other", 5.0)
    (tmp_path / "model" / "model.tflite").write_bytes(convert(tmp_path / "other", "serving_default"))
    servable = load(tmp_path / "model", "tflite")
    np.testing.assert_allclose(servable.predict({"x": np.ones((1, 4), np.float32)})["y"], 5.0)
    assert not (tmp_path / "model" / CACHE_DIR_NAME).exists()


def cache_entries(version: Path) -> list[Path]:
    return sorted((version / CACHE_DIR_NAME).glob("*.tflite"))


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "other model"])
def test_a_corrupt_cached_conversion_is_rebuilt_never_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corruption: str
) -> None:
    version = tmp_path / "model"
    build_scaling_model(version, 2.0)
    load(version, "tflite")
    [entry] = cache_entries(version)
    good = entry.read_bytes()
    if corruption == "truncated":  # the content no longer matches the hash in the name
        entry.write_bytes(good[: len(good) // 2])
    else:  # a consistent name, but content the interpreter refuses, or another signature (input "z")
        build_scaling_model(tmp_path / "other", 7.0, input_name="z")
        content = b"\0" * 64 if corruption == "garbage" else convert(tmp_path / "other", "serving_default")
        key = entry.stem.rsplit("-", 1)[0]
        entry.unlink()
        entry = entry.with_name(f"{key}-{hashlib.sha256(content).hexdigest()}.tflite")
        entry.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="tensorgate.server.runtimes.tflite"):
        servable = load(version, "tflite")
    assert any(r.getMessage() == "corrupt cached tflite model removed" for r in caplog.records)
    np.testing.assert_allclose(servable.predict({"x": np.ones((2, 4), np.float32)})["y"], 2.0)
    [rebuilt] = cache_entries(version)
    assert rebuilt.read_bytes() == good


def test_a_stale_cached_conversion_is_rebuilt_when_the_saved_model_changes(tmp_path: Path) -> None:
    version = tmp_path / "model"
    build_scaling_model(version, 2.0)
    servable = load(version, "tflite")
    np.testing.assert_allclose(servable.predict({"x": np.ones((1, 4), np.float32)})["y"], 2.0)
    [first] = cache_entries(version)
    build_scaling_model(tmp_path / "changed", 3.0)
    for name in ("saved_model.pb", "variables"):  # the new SavedModel replaces the old in place; the cache stays
        shutil.rmtree(version / name) if (version / name).is_dir() else (version / name).unlink()
        shutil.move(tmp_path / "changed" / name, version / name)
    servable = load(version, "tflite")
    np.testing.assert_allclose(servable.predict({"x": np.ones((1, 4), np.float32)})["y"], 3.0)
    [second] = cache_entries(version)
    assert second.name.split("-")[0] != first.name.split("-")[0]


def test_the_cache_moves_to_the_user_cache_when_the_version_cannot_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = tmp_path / "model"
    build_scaling_model(version, 2.0)
    (version / CACHE_DIR_NAME).write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    load(version, "tflite")
    assert len(list((tmp_path / "user-cache" / "tensorgate" / "tflite").glob("*/*.tflite"))) == 1
