"""The model repository on disk: ``<root>/<model>/<version>/`` with a SavedModel in each version.

This module only says *what* is there; loading is the loader's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tensorgate.server.config import MODEL_NAME_PATTERN

MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass(frozen=True)
class VersionPath:
    """One version directory of one model."""

    model: str
    version: int
    path: Path


# Every number of up to 18 digits fits the signed 64-bit version fields of the protocols (TF Serving's
# ModelSpec.version, Triton's statistics); and the bound comes before int(), which refuses texts of
# more than 4,300 digits with a ValueError.
MAX_VERSION_DIGITS = 18


def is_version_number(text: str) -> bool:
    """Whether ``text`` is written like a version number: ASCII digits only (``"²".isdigit()`` is true too)."""
    return text.isascii() and text.isdigit()


def version_number(text: str) -> int | None:
    """The positive version number ``text`` writes (at most ``MAX_VERSION_DIGITS`` digits), or None."""
    if len(text) > MAX_VERSION_DIGITS or not is_version_number(text):
        return None
    return int(text) or None


def is_complete(path: Path) -> bool:
    """A version directory counts once its SavedModel graph file exists.

    Writers should build a version in a hidden directory and rename it into
    place (``tensorgate train`` does); hidden directories are never scanned.
    """
    return any((path / name).is_file() for name in SAVED_MODEL_FILES)


def scan_repository(root: Path, only: str | None = None) -> dict[str, list[VersionPath]]:
    """Every model directory of ``root`` (or only the one named ``only``) with its complete versions, oldest first.

    Raises FileNotFoundError when ``root`` is not a directory. Directories whose
    names are not valid model names or positive version numbers are skipped.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    models: dict[str, list[VersionPath]] = {}
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or not MODEL_NAME.match(model_dir.name) or only not in (None, model_dir.name):
            continue
        versions = [
            VersionPath(model_dir.name, number, child)
            for child in model_dir.iterdir()
            if child.is_dir() and (number := version_number(child.name)) is not None and is_complete(child)
        ]
        models[model_dir.name] = sorted(versions, key=lambda v: v.version)
    return models
