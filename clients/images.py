"""Images shaped as a model's input asks: the layout, channels, height and width read from its signature.

A signature input fits images when it is ``[N, H, W]`` (grayscale), ``[N, H, W, C]`` (channels last) or
``[N, C, H, W]`` (channels first) with C of 1 (grayscale), 3 (RGB) or 4 (RGBA); a fixed H and W resize the image,
-1 keeps its size. Anything else cannot take an image, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tensorgate.v1.tensor_pb2 import TensorSpec

MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels to Pillow's mode


@dataclass(frozen=True)
class ImageShape:
    """How one image becomes one example: ``channels`` None means no channel axis (grayscale ``[H, W]``);
    ``height`` / ``width`` None keep the image's own size."""

    channels: int | None = None
    channels_first: bool = False
    height: int | None = None
    width: int | None = None

    @classmethod
    def of(cls, spec: TensorSpec) -> ImageShape:
        """The image shape ``spec`` (one input of a signature, batch axis first) takes; ValueError when it takes no
        image."""
        shape = list(spec.shape)
        fits = "an image input is [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1, 3 or 4"
        if spec.unknown_rank:
            raise ValueError(f"input {spec.name!r} has no fixed rank, so no image shape: {fits}")
        if len(shape) == 3:
            return cls(None, False, *_sizes(shape[1], shape[2]))
        if len(shape) == 4:
            if shape[3] in MODES:
                return cls(shape[3], False, *_sizes(shape[1], shape[2]))
            if shape[1] in MODES:
                return cls(shape[1], True, *_sizes(shape[2], shape[3]))
        raise ValueError(f"input {spec.name!r} of shape {shape} cannot take an image: {fits}")

    def fit(self, image: Image.Image) -> np.ndarray:
        """``image`` converted to the channels and resized to the height and width, as uint8."""
        converted = image.convert(MODES[self.channels or 1])
        size = (self.width or converted.width, self.height or converted.height)
        if size != converted.size:
            converted = converted.resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(converted, dtype=np.uint8)
        if self.channels is None:
            return pixels
        if self.channels == 1:
            pixels = pixels[..., np.newaxis]
        return np.moveaxis(pixels, -1, 0) if self.channels_first else pixels


GRAYSCALE = ImageShape()  # [H, W] at the image's own size, for callers that know no signature


def _sizes(height: int, width: int) -> tuple[int | None, int | None]:
    return (height if height > 0 else None, width if width > 0 else None)
