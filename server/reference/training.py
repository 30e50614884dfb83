"""Trains the reference MNIST classifier and exports it as the next version of a model repository.

Flatten 28x28 -> Dense 128 relu -> Dense 10 softmax, Adam, categorical
cross-entropy, inputs scaled to [0, 1], fixed seed: about 0.975 test accuracy
after 5 epochs. The export is a Keras 3 SavedModel (signature
``serving_default``, input ``keras_tensor`` float32 [-1, 28, 28], output
``output_0``), written to a hidden directory and renamed into place so that no
reader ever sees half a version.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tensorgate.clients.datasets import DEFAULT_CACHE_DIR, load_mnist, to_model_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    """The exported version and how good and how slow its training was."""

    version: int
    path: Path
    test_accuracy: float
    train_seconds: float


def next_version(model_dir: Path) -> int:
    """One more than the largest version directory of ``model_dir`` (1 when there is none)."""
    if not model_dir.is_dir():
        return 1
    versions = (int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit())
    return max(versions, default=0) + 1


def build_model() -> keras.Model:
    """The reference architecture, compiled."""
    model = keras.Sequential(
        [
            keras.Input((28, 28), dtype="float32"),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _log_epoch(epoch: int, logs: dict[str, float]) -> None:
    log.info("epoch %d: loss %.4f, accuracy %.4f", epoch + 1, logs["loss"], logs["accuracy"])


def train_mnist(
    repository: Path,
    model_name: str = "mnist",
    epochs: int = 5,
    seed: int = 0,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> TrainingResult:
    """Train on the 60k training images, evaluate on the 10k test images, export the next version."""
    data = load_mnist(cache_dir)
    x_train = to_model_input(data.x_train, np.dtype(np.float32))
    x_test = to_model_input(data.x_test, np.dtype(np.float32))
    keras.utils.set_random_seed(seed)
    model = build_model()
    log.info("training %s for %d epochs on %d images", model_name, epochs, len(x_train))
    started = time.monotonic()
    model.fit(
        x_train,
        keras.utils.to_categorical(data.y_train, 10),
        batch_size=32,
        epochs=epochs,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=_log_epoch)],
    )
    train_seconds = time.monotonic() - started
    _, accuracy = model.evaluate(x_test, keras.utils.to_categorical(data.y_test, 10), verbose=0)

    model_dir = repository / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    target = model_dir / str(version)
    # The hidden staging directory keeps half-written exports out of the repository watcher's sight. The export goes
    # into a subdirectory of it because mkdtemp creates the staging directory itself readable by its owner only.
    staging = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_dir))
    try:
        model.export(str(staging / "saved_model"), verbose=False)
        os.rename(staging / "saved_model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s version %d to %s (test accuracy %.4f)", model_name, version, target, accuracy)
    return TrainingResult(version=version, path=target, test_accuracy=float(accuracy), train_seconds=train_seconds)
