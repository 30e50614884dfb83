"""Per-model configuration: ``<repository>/<model>/model.toml``, over the server's defaults.

Example::

    device = "gpu:0"

    [batching]
    max_batch_size = 64
    max_queue_delay_us = 500
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tensorgate.server.batching import BatchingConfig
from tensorgate.server.config import DEVICE_PATTERN, merge_nested

MODEL_CONFIG_FILE = "model.toml"


class ModelConfigError(ValueError):
    """A model's configuration file is unreadable or invalid; the message names the file."""


class ModelConfig(BaseModel):
    """Settings of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu or gpu:N.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching knobs.")


def load_model_config(model_dir: Path, defaults: ModelConfig) -> ModelConfig:
    """``defaults`` overridden by the keys of ``model_dir/model.toml`` (nested tables merge key by key)."""
    path = model_dir / MODEL_CONFIG_FILE
    if not path.is_file():
        return defaults
    try:
        overrides = tomllib.loads(path.read_text())
        return ModelConfig.model_validate(merge_nested(defaults.model_dump(), overrides))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ModelConfigError(f"{path}: {exc}") from exc
