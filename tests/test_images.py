"""Images shaped from a model input's signature: layout, channels, resizing, and the inputs that take no image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tensorgate.clients.datasets import load_examples
from tensorgate.clients.images import ImageShape
from tensorgate.v1.tensor_pb2 import DataType, TensorSpec


def spec(*shape: int, unknown_rank: bool = False) -> TensorSpec:
    return TensorSpec(name="image", dtype=DataType.DATA_TYPE_FLOAT32, shape=shape, unknown_rank=unknown_rank)


@pytest.fixture()
def photo() -> Image.Image:
    """A 40x30 RGB image: red left half, blue right half."""
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((-1, 28, 28), (28, 28)),
        ((-1, -1, -1), (30, 40)),
        ((-1, 16, 16, 1), (16, 16, 1)),
        ((-1, 224, 224, 3), (224, 224, 3)),
        ((-1, 3, 20, 10), (3, 20, 10)),
        ((-1, 8, 8, 4), (8, 8, 4)),
        ((-1, -1, 12, 3), (30, 12, 3)),
    ],
)
def test_an_image_takes_the_inputs_layout_channels_and_size(
    photo: Image.Image, shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    pixels = ImageShape.of(spec(*shape)).fit(photo)
    assert pixels.shape == expected and pixels.dtype == np.uint8


def test_colours_survive_and_grayscale_converts(photo: Image.Image) -> None:
    rgb = ImageShape.of(spec(-1, 10, 10, 3)).fit(photo)
    assert rgb[5, 1].tolist() == [255, 0, 0] and rgb[5, 8].tolist() == [0, 0, 255]
    first = ImageShape.of(spec(-1, 3, 10, 10)).fit(photo)
    np.testing.assert_array_equal(first, np.moveaxis(rgb, -1, 0))
    gray = ImageShape.of(spec(-1, 10, 10)).fit(photo)
    np.testing.assert_array_equal(gray, np.asarray(photo.convert("L").resize((10, 10), Image.Resampling.BILINEAR)))


@pytest.mark.parametrize(
    ("input_spec", "message"),
    [
        (spec(-1, 784), "input 'image' of shape [-1, 784] cannot take an image"),
        (spec(-1, 28, 28, 2), "of shape [-1, 28, 28, 2] cannot take an image"),
        (spec(-1, 1, 2, 3, 4), "cannot take an image"),
        (spec(unknown_rank=True), "input 'image' has no fixed rank, so no image shape"),
    ],
)
def test_an_input_that_takes_no_image_says_what_would(input_spec: TensorSpec, message: str) -> None:
    with pytest.raises(ValueError, match="an image input is \\[N, H, W\\], \\[N, H, W, C\\] or \\[N, C, H, W\\]") as e:
        ImageShape.of(input_spec)
    assert message in str(e.value)


def test_a_directory_of_different_sizes_loads_for_a_fixed_size_only(photo: Image.Image, tmp_path: Path) -> None:
    photo.save(tmp_path / "a.png")
    photo.resize((50, 50)).save(tmp_path / "b.jpg")
    examples = load_examples(tmp_path, image_input=spec(-1, 28, 28))
    assert examples.x.shape == (2, 28, 28) and examples.names == ["a.png", "b.jpg"]
    assert load_examples(tmp_path / "b.jpg", image_input=spec(-1, 32, 32, 3)).x.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="images of different sizes need a model input of fixed height and width"):
        load_examples(tmp_path, image_input=spec(-1, -1, -1, 3))
