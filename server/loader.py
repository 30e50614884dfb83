"""The loader: turns version directories of the repository into servables in the registry.

Policy: each model serves the newest version that loads and warms up. A
version that fails is recorded as FAILED with the reason, and the next older
version is tried, so that a broken upload never takes a model offline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tensorgate.server.devices import DeviceError, resolve_device
from tensorgate.server.model_config import ModelConfig, ModelConfigError, load_model_config
from tensorgate.server.registry import ModelRegistry, ModelVersion, VersionState
from tensorgate.server.repository import VersionPath, scan_repository
from tensorgate.server.runtime import ModelLoadError, SavedModelRuntime

log = logging.getLogger(__name__)


def load_version(version: VersionPath, signature_name: str, config: ModelConfig) -> SavedModelRuntime:
    """Load and warm up one version on its configured device. Raises ModelLoadError with the reason."""
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from None
    runtime = SavedModelRuntime(version.path, signature_name, device)
    runtime.warm_up()
    return runtime


def load_repository(root: Path, registry: ModelRegistry, signature_name: str, defaults: ModelConfig) -> None:
    """Load every model of the repository under the newest-that-loads policy."""
    for model, versions in scan_repository(root).items():
        registry.add_model(model)
        if not versions:
            log.warning("model has no complete version", extra={"fields": {"model": model}})
            continue
        try:
            config = load_model_config(root / model, defaults)
        except ModelConfigError as exc:
            newest = versions[-1]
            registry.put(ModelVersion(model, newest.version, newest.path, VersionState.FAILED, defaults, str(exc)))
            log.error("model configuration is invalid", extra={"fields": {"model": model, "error": str(exc)}})
            continue
        for version in reversed(versions):
            if _load_into(registry, version, signature_name, config):
                break


def _load_into(registry: ModelRegistry, version: VersionPath, signature_name: str, config: ModelConfig) -> bool:
    fields = {"model": version.model, "version": version.version, "path": str(version.path)}
    registry.put(ModelVersion(version.model, version.version, version.path, VersionState.LOADING, config))
    started = time.monotonic()
    try:
        runtime = load_version(version, signature_name, config)
    except ModelLoadError as exc:
        failed = ModelVersion(version.model, version.version, version.path, VersionState.FAILED, config, str(exc))
        registry.put(failed)
        log.error("model version failed to load", extra={"fields": {**fields, "error": str(exc)}})
        return False
    available = ModelVersion(
        version.model, version.version, version.path, VersionState.AVAILABLE, config, servable=runtime
    )
    registry.put(available)
    seconds = round(time.monotonic() - started, 3)
    log.info("model version available", extra={"fields": {**fields, "device": runtime.device, "seconds": seconds}})
    return True
