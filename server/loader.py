"""The loader: turns one version directory into a warmed-up servable (what to load is the manager's call)."""

from __future__ import annotations

from tensorgate.server.devices import DeviceError, resolve_device
from tensorgate.server.model_config import ModelConfig
from tensorgate.server.repository import VersionPath
from tensorgate.server.runtime import ModelLoadError, SavedModelRuntime


def load_version(version: VersionPath, signature_name: str, config: ModelConfig) -> SavedModelRuntime:
    """Load and warm up one version on its configured device. Raises ModelLoadError with the reason."""
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from None
    runtime = SavedModelRuntime(version.path, signature_name, device)
    runtime.warm_up()
    return runtime
