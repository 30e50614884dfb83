"""Per-model configuration: ``<repository>/<model>/model.toml``, over the server's defaults.

Example::

    device = "gpu:0"
    runtime = "tensorflow"

    [batching]
    max_batch_size = 64
    max_queue_delay_us = 500

    [warmup]
    inputs = "warmup.npz"  # or "zeros" (the default) or "random"
    count = 3
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tensorgate.server.config import DEVICE_PATTERN, RUNTIME_DESCRIPTION, BatchingConfig, Runtime, merge_nested
from tensorgate.server.errors import quote
from tensorgate.server.models.repository import is_version_number

MODEL_CONFIG_FILE = "model.toml"
MAX_LABEL_LENGTH = 128
WARMUP_GENERATED = ("zeros", "random")
WARMUP_FILE_SUFFIXES = (".npy", ".npz")


def check_label(label: str) -> None:
    """ValueError unless ``label`` can name a version: 1 to 128 characters, not written like a number."""
    if not label or len(label) > MAX_LABEL_LENGTH or is_version_number(label):
        raise ValueError(f"label {quote(label)} must be a name of 1 to {MAX_LABEL_LENGTH} characters, not a number")


class ModelConfigError(ValueError):
    """A model's configuration file is unreadable or invalid; the message names the file."""


class WarmupConfig(BaseModel):
    """What runs on a version before it serves, when it ships no ``assets.extra/tf_serving_warmup_requests``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: str = Field(
        "zeros",
        description="zeros (empty strings), random (seeded; strings empty), or the name of a .npy file (a "
        "single-input signature) or .npz file (one array per input) in the version directory, else the model "
        "directory, holding one batch.",
    )
    count: int = Field(
        1, ge=1, le=1000, description="Times each warm-up request runs (TF Serving's num_request_iterations)."
    )
    preferred_batch_sizes: bool = Field(
        True, description="Also run a batch of every preferred batch size of [batching] (from the same inputs)."
    )

    @field_validator("inputs")
    @classmethod
    def _known_source(cls, inputs: str) -> str:
        if inputs in WARMUP_GENERATED:
            return inputs
        if inputs != Path(inputs).name or inputs.startswith(".") or not inputs.endswith(WARMUP_FILE_SUFFIXES):
            raise ValueError(f"warm-up inputs must be zeros, random, or a .npy/.npz file name, not {quote(inputs)}")
        return inputs


class ModelConfig(BaseModel):
    """Settings of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu or gpu:N.")
    runtime: Runtime = Field("auto", description=RUNTIME_DESCRIPTION)
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching knobs.")
    version_policy: Literal["latest", "all", "specific"] = Field(
        "latest", description="Which versions on disk are served: the newest latest_count, all, or specific_versions."
    )
    latest_count: int = Field(1, ge=1, description="Versions served under the 'latest' policy.")
    specific_versions: tuple[int, ...] = Field((), description="Versions served under the 'specific' policy.")
    labels: dict[str, int] = Field(
        default_factory=dict, description="Names a request may use instead of a number, e.g. stable = 3."
    )
    allow_signature_change: bool = Field(
        False, description="Serve a new version whose signature would break callers of the current one."
    )
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="Warm-up requests run before serving.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.version_policy == "specific" and not self.specific_versions:
            raise ValueError("version_policy 'specific' needs specific_versions")
        for label in self.labels:
            check_label(label)
        return self

    def wanted(self, on_disk: list[int]) -> set[int]:
        """The versions of ``on_disk`` this policy serves."""
        if self.version_policy == "all":
            return set(on_disk)
        if self.version_policy == "specific":
            return set(on_disk) & set(self.specific_versions)
        return set(sorted(on_disk)[-self.latest_count :])


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
