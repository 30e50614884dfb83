"""The registry: which model versions exist in the server and in what state.

It answers "which servable handles this request" and nothing else; the loader
decides what to load. Readers get a consistent snapshot under a lock, and a
version becomes visible to requests only once it is AVAILABLE.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from pathlib import Path

from tensorgate.server.errors import InvalidArgumentError, NotFoundError, UnavailableError, quote
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import MAX_VERSION_DIGITS, is_version_number, version_number
from tensorgate.server.runtimes.signature import Servable


class VersionState(enum.Enum):
    """Lifecycle of a model version, as reported by ModelService."""

    LOADING = "loading"
    AVAILABLE = "available"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class ModelVersion:
    """An immutable snapshot of one version; state changes replace it in the registry."""

    model: str
    version: int
    path: Path
    state: VersionState
    config: ModelConfig
    error: str = ""
    servable: Servable | None = None  # held while LOADING (warm-up), AVAILABLE and UNLOADING (drain)

    def __post_init__(self) -> None:
        if self.state is VersionState.AVAILABLE and self.servable is None:
            raise ValueError(f"model {self.model!r} version {self.version} is AVAILABLE without a servable")


@dataclass(frozen=True)
class AvailableVersion:
    """A version that serves requests: what ``ModelRegistry.resolve`` answers, its servable always present."""

    model: str
    version: int
    config: ModelConfig
    servable: Servable


class ModelRegistry:
    """Model name → version number → ModelVersion, safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._labels: dict[str, dict[str, int]] = {}

    def add_model(self, model: str) -> None:
        """Make a model known, even before any of its versions loads."""
        with self._lock:
            self._models.setdefault(model, {})

    def put(self, version: ModelVersion) -> None:
        """Insert or replace one version (a state change)."""
        with self._lock:
            self._models.setdefault(version.model, {})[version.version] = version

    def remove(self, model: str, version: int) -> None:
        """Forget one version (after it has drained)."""
        with self._lock:
            self._models.get(model, {}).pop(version, None)

    def remove_model(self, model: str) -> None:
        """Forget a model whose directory is gone."""
        with self._lock:
            self._models.pop(model, None)
            self._labels.pop(model, None)

    def set_labels(self, model: str, labels: dict[str, int]) -> None:
        """Replace a model's labels; each request that names a label resolves it at that moment."""
        with self._lock:
            if model not in self._models:
                raise NotFoundError(self._unknown_model_message(model))
            self._labels[model] = dict(labels)

    def labels(self, model: str) -> dict[str, int]:
        """The model's labels (label → version)."""
        with self._lock:
            return dict(self._labels.get(model, {}))

    def model_names(self) -> list[str]:
        """Every known model, sorted."""
        with self._lock:
            return sorted(self._models)

    def versions(self, model: str) -> list[ModelVersion]:
        """Every version of ``model``, newest first. NOT_FOUND for an unknown model."""
        with self._lock:
            versions = self._models.get(model)
            if versions is None:
                raise NotFoundError(self._unknown_model_message(model))
            return sorted(versions.values(), key=lambda v: v.version, reverse=True)

    def states(self) -> list[tuple[str, str]]:
        """(model, state) of every known version, for the model-state metric."""
        with self._lock:
            return [(model, v.state.value) for model, vs in self._models.items() for v in vs.values()]

    def runtimes(self) -> list[tuple[str, str, str]]:
        """(model, version, runtime) of every available version, for the runtime metric."""
        with self._lock:
            return [
                (model, str(v.version), v.servable.runtime)
                for model, vs in self._models.items()
                for v in vs.values()
                if v.state is VersionState.AVAILABLE and v.servable
            ]

    def knows(self, model: str) -> bool:
        """True when ``model`` is in the registry (so that it may be a metric label)."""
        with self._lock:
            return model in self._models

    def has_available(self) -> bool:
        """True when at least one version of any model can serve."""
        with self._lock:
            return any(v.state is VersionState.AVAILABLE for vs in self._models.values() for v in vs.values())

    def find(self, model: str, version: str) -> ModelVersion:
        """The version named by number or label, in any state. NOT_FOUND when it is unknown."""
        number = self._version_number(model, version)
        for candidate in self.versions(model):
            if candidate.version == number:
                return candidate
        raise NotFoundError(f"model {quote(model)} has no version {number}; known versions: {self._known(model)}")

    def resolve(self, model: str, version: str) -> AvailableVersion:
        """The version that serves a request: the named one, or the newest AVAILABLE one for "".

        NOT_FOUND for an unknown model or version, UNAVAILABLE when the version
        (or, for "", every version) is not AVAILABLE, with the reason.
        """
        if version:
            found = self.find(model, version)
            if found.state is not VersionState.AVAILABLE:
                raise UnavailableError(f"model {quote(model)} version {found.version} is {_state_text(found)}")
            return _available(found)
        versions = self.versions(model)
        for candidate in versions:
            if candidate.state is VersionState.AVAILABLE:
                return _available(candidate)
        detail = "; ".join(f"version {v.version} is {_state_text(v)}" for v in versions) or "no version on disk"
        raise UnavailableError(f"model {quote(model)} has no available version: {detail}")

    def _version_number(self, model: str, version: str) -> int:
        if is_version_number(version):
            return parse_version(version)
        label = self.labels(model).get(version)
        if label is None:
            self.versions(model)  # NOT_FOUND for an unknown model first
            known = ", ".join(sorted(self.labels(model))) or "none"
            raise NotFoundError(f"model {quote(model)} has no version label {quote(version)}; labels: {known}")
        return label

    def _known(self, model: str) -> str:
        return ", ".join(str(v.version) for v in self.versions(model)) or "none"

    def _unknown_model_message(self, model: str) -> str:
        known = ", ".join(sorted(self._models)) or "none"
        return f"model {quote(model)} not found; models: {known}"


def parse_version(version: str) -> int:
    """A version number from its text form. INVALID_ARGUMENT unless it is a positive integer that fits."""
    number = version_number(version)
    if number is None:
        raise InvalidArgumentError(
            f"version must be a positive integer of at most {MAX_VERSION_DIGITS} digits, got {quote(version)}"
        )
    return number


def _available(version: ModelVersion) -> AvailableVersion:
    assert version.servable is not None, "ModelVersion refuses to be AVAILABLE without a servable"
    return AvailableVersion(version.model, version.version, version.config, version.servable)


def _state_text(version: ModelVersion) -> str:
    if version.state is VersionState.FAILED:
        return f"failed: {version.error}"
    return version.state.value
