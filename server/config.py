"""The server's one typed configuration: defaults, then a TOML file, then
``TENSORGATE_*`` environment variables, then command-line flags.

Every knob is a field of :class:`ServerConfig`; the ``serve`` command builds its
flags from these fields, so a knob is documented once, here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "TENSORGATE_"
MiB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration file, environment or flags hold an invalid value."""


class ServerConfig(BaseModel):
    """Settings of one tensorgate server process. Defaults work on a laptop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds (0.0.0.0 for every interface).")
    port: int = Field(8500, ge=0, le=65535, description="gRPC port; 0 picks a free port and logs it.")
    model_repository: Path = Field(
        Path("models"), description="Root of the model repository: <root>/<model>/<version>/."
    )
    signature_name: str = Field("serving_default", description="SavedModel signature to serve.")
    model_workers: int = Field(2, ge=1, description="Threads that run model calls off the event loop.")
    max_message_bytes: int = Field(64 * MiB, ge=1024, description="Largest gRPC message accepted or sent, in bytes.")
    max_examples_per_request: int = Field(4096, ge=1, description="Largest batch (first dimension) of one request.")
    max_tensor_elements: int = Field(16 * MiB, ge=1, description="Largest number of elements of one input tensor.")
    reject_non_finite: bool = Field(True, description="Refuse NaN and infinite values in floating-point inputs.")
    stream_window: int = Field(
        8, ge=1, description="Requests of one StreamPredict stream worked on at once; reading pauses when full."
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="Seconds in-flight calls may take to finish on SIGTERM.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")


def environment_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``TENSORGATE_<FIELD>`` variables of ``environ``, keyed by field name."""
    return {
        key.removeprefix(ENV_PREFIX).lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX).lower() in ServerConfig.model_fields
    }


def load_config(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Merge defaults < ``config_file`` (TOML) < environment < ``flags`` into one validated config."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {config_file}: {exc}") from exc
    values.update(environment_values(os.environ if environ is None else environ))
    values.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        return ServerConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
