"""The manager: reconciles what is served with what the repository and the admin API ask for.

TF Serving's seam: the repository says which versions exist, each model's
policy says which are wanted, and the manager loads, swaps and unloads so that
the registry follows, keeping every model available on the way:

* a wanted version is loaded, signature-checked against the version it
  replaces, and warmed up on a thread, and only then becomes AVAILABLE;
* a version that fails stays FAILED with its reason and never replaces a
  working one: while no wanted version is available, the newest older version
  that loads keeps serving;
* a version that is no longer wanted (or left the disk) turns UNLOADING, so no
  new request resolves to it, drains its batcher, and is dropped.

Reconciliation runs at start-up, every ``poll_interval_s`` when watching, and
after each admin call; one at a time. A repository in object storage is a local
mirror (``mirror.py``) that ``refresh`` brings up to date before each full
reconciliation; the manager only ever scans a directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tensorgate.server.errors import InvalidArgumentError, ModelLoadError, NotFoundError, quote
from tensorgate.server.models.model_config import ModelConfig, ModelConfigError, check_label, load_model_config
from tensorgate.server.models.registry import ModelRegistry, ModelVersion, VersionState, parse_version
from tensorgate.server.models.repository import VersionPath, scan_repository
from tensorgate.server.observability import metrics
from tensorgate.server.runtimes.signature import Servable, Signature, breaking_changes

log = logging.getLogger(__name__)


Loader = Callable[[VersionPath, str, ModelConfig], Servable]
"""Loads and warms up one version directory (``loader.load_version``); raises ModelLoadError with the reason."""
RetireHook = Callable[[ModelVersion], Awaitable[None]]
"""Called when a version copy stops taking requests, to let it finish those it has (``DataPlane.retire``)."""


class ModelManager:
    """Owns every change of the registry after start-up.

    It decides what is loaded; ``load`` does the loading, and ``on_retire`` tells whoever serves requests that
    a copy leaves (as MLServer's registry hooks do), so the manager depends on neither the runtimes nor the
    data plane.
    """

    def __init__(
        self,
        root: Path,
        registry: ModelRegistry,
        signature_name: str,
        defaults: ModelConfig,
        load: Loader,
        on_retire: RetireHook,
        *,
        refresh: Callable[[], None] | None = None,
        only: str | None = None,
    ) -> None:
        """``refresh`` (blocking, run on a thread) updates ``root`` from a remote repository before each scan."""
        self._root = root
        self._refresh = refresh
        self._only = only  # the one model of the repository to serve (ServerConfig.model_name); None = every one
        self._registry = registry
        self._load_version = load
        self._on_retire = on_retire
        self._signature_name = signature_name
        self._defaults = defaults
        self._lock = asyncio.Lock()
        self._pinned: dict[str, set[int]] = {}  # loaded by the admin API beyond the policy
        self._excluded: dict[str, set[int]] = {}  # unloaded by the admin API
        self._label_overrides: dict[str, dict[str, int]] = {}
        self._config_errors: dict[str, str] = {}  # reported once per distinct error, not every poll

    async def reconcile_all(self) -> None:
        """Bring every model in line with the repository."""
        async with self._lock:
            if self._refresh is not None:
                await asyncio.to_thread(self._refresh)
            on_disk = scan_repository(self._root, self._only)
            for model in self._registry.model_names():
                if model not in on_disk:
                    await self._unload_versions(model, {v.version for v in self._registry.versions(model)})
                    self._registry.remove_model(model)
            for model, versions in on_disk.items():
                await self._reconcile(model, versions)

    async def watch(self, interval_s: float) -> None:
        """Reconcile every ``interval_s`` seconds, forever; a failing round is logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reconcile_all()
            except Exception:
                log.exception("repository reconciliation failed")

    async def load(self, model: str, version: str) -> None:
        """Serve a version (or, for "", the policy's versions) even if the policy would not."""
        async with self._lock:
            versions = self._on_disk(model)
            if version:
                number = _number(model, version, versions)
                self._pinned.setdefault(model, set()).add(number)
                self._excluded.get(model, set()).discard(number)
            else:
                self._excluded.pop(model, None)
            self._forget_failed(model)
            await self._reconcile(model, versions)

    async def unload(self, model: str, version: str) -> None:
        """Stop serving a version (or, for "", every version) until the next reload."""
        async with self._lock:
            versions = self._on_disk(model)
            loaded = {v.version for v in self._registry.versions(model)}
            numbers = {_number(model, version, versions)} if version else loaded | {v.version for v in versions}
            if version and numbers.isdisjoint(loaded):
                raise NotFoundError(f"model {quote(model)} version {version} is not loaded")
            self._excluded.setdefault(model, set()).update(numbers)
            self._pinned.get(model, set()).difference_update(numbers)
            await self._reconcile(model, versions)

    async def reload(self, model: str, version: str) -> None:
        """Re-read the model's configuration, retry failed versions, and load fresh copies from disk.

        With a version, only that version is reloaded (loaded anew, swapped in,
        the old copy drained); admin pins, exclusions and labels are cleared.
        """
        async with self._lock:
            versions = self._on_disk(model)
            numbers = [_number(model, version, versions)] if version else None
            self._pinned.pop(model, None)
            self._excluded.pop(model, None)
            self._label_overrides.pop(model, None)
            self._forget_failed(model)
            config = self._config(model)
            if config is None:
                return
            by_number = {v.version: v for v in versions}
            for current in self._registry.versions(model):
                if current.state is VersionState.AVAILABLE and (numbers is None or current.version in numbers):
                    await self._swap(current, by_number.get(current.version), config)
            await self._reconcile(model, versions)

    async def set_labels(self, model: str, labels: dict[str, int]) -> None:
        """Point labels at versions; every labelled version must be AVAILABLE, or nothing changes."""
        async with self._lock:
            available = {v.version for v in self._registry.versions(model) if v.state is VersionState.AVAILABLE}
            for label, number in labels.items():
                try:
                    check_label(label)
                except ValueError as exc:
                    raise InvalidArgumentError(str(exc)) from None
                if number not in available:
                    raise InvalidArgumentError(
                        f"label {quote(label)}: version {number} of model {quote(model)} is not available "
                        f"(available: {sorted(available)})"
                    )
            self._label_overrides[model] = dict(labels)
            self._registry.set_labels(model, labels)
            log.info("labels set", extra={"fields": {"model": model, "labels": labels}})

    def _on_disk(self, model: str) -> list[VersionPath]:
        versions = scan_repository(self._root, self._only).get(model)
        if versions is None:
            self._registry.versions(model)  # NOT_FOUND with the list of models
            raise NotFoundError(f"model {quote(model)} is not in the repository")
        return versions

    def _config(self, model: str) -> ModelConfig | None:
        try:
            config = load_model_config(self._root / model, self._defaults)
        except ModelConfigError as exc:
            if self._config_errors.get(model) != str(exc):
                self._config_errors[model] = str(exc)
                log.error(
                    "model configuration is invalid; keeping what is served", extra={"fields": {"error": str(exc)}}
                )
                metrics.LOAD_FAILURES.labels(model=model).inc()
            return None
        self._config_errors.pop(model, None)
        return config

    def _forget_failed(self, model: str) -> None:
        for version in self._registry.versions(model):
            if version.state is VersionState.FAILED:
                self._registry.remove(model, version.version)

    async def _reconcile(self, model: str, versions: list[VersionPath]) -> None:
        self._registry.add_model(model)
        config = self._config(model)
        if config is None:
            return
        by_number = {v.version: v for v in versions}
        excluded = self._excluded.get(model, set())
        wanted = (config.wanted(list(by_number)) | (self._pinned.get(model, set()) & set(by_number))) - excluded
        known = {v.version for v in self._registry.versions(model)}
        for number in sorted(wanted - known, reverse=True):
            await self._load(by_number[number], config)
        keep = set(wanted)
        if not self._available(model) & wanted:
            # Availability first: keep (or load) the newest older version that works.
            for number in sorted(set(by_number) - wanted - excluded, reverse=True):
                if number in self._available(model) or await self._load(by_number[number], config):
                    keep.add(number)
                    break
        await self._unload_versions(model, {v.version for v in self._registry.versions(model)} - keep)
        labels = {**config.labels, **self._label_overrides.get(model, {})}
        self._registry.set_labels(model, labels)

    def _available(self, model: str) -> set[int]:
        return {v.version for v in self._registry.versions(model) if v.state is VersionState.AVAILABLE}

    def _serving_signature(self, model: str, but: int) -> Signature | None:
        """Signature of the newest available version other than ``but``: what callers rely on now."""
        for version in self._registry.versions(model):
            if version.version != but and version.state is VersionState.AVAILABLE and version.servable:
                return version.servable.signature
        return None

    async def _load(self, path: VersionPath, config: ModelConfig) -> bool:
        """Load one version into the registry; False (and FAILED with the reason) when it cannot serve."""
        fields = {"model": path.model, "version": path.version, "path": str(path.path)}
        self._registry.put(ModelVersion(path.model, path.version, path.path, VersionState.LOADING, config))
        started = time.monotonic()
        try:
            runtime = await asyncio.to_thread(self._load_version, path, self._signature_name, config)
            current = self._serving_signature(path.model, path.version)
            problems = breaking_changes(current, runtime.signature) if current else []
            if problems and not config.allow_signature_change:
                raise ModelLoadError(
                    "signature change would break callers (set allow_signature_change to serve it anyway): "
                    + "; ".join(problems)
                )
        except ModelLoadError as exc:
            failed = ModelVersion(path.model, path.version, path.path, VersionState.FAILED, config, str(exc))
            self._registry.put(failed)
            metrics.LOAD_FAILURES.labels(model=path.model).inc()
            log.error("model version failed to load", extra={"fields": {**fields, "error": str(exc)}})
            return False
        seconds = time.monotonic() - started
        metrics.LOAD_SECONDS.labels(model=path.model).observe(seconds)
        self._registry.put(
            ModelVersion(path.model, path.version, path.path, VersionState.AVAILABLE, config, servable=runtime)
        )
        log.info(
            "model version available",
            extra={
                "fields": {
                    **fields,
                    "device": runtime.device,
                    "runtime": runtime.runtime,
                    "call_us": round(runtime.call_seconds * 1e6, 1),
                    "seconds": round(seconds, 3),
                }
            },
        )
        return True

    async def _swap(self, current: ModelVersion, path: VersionPath | None, config: ModelConfig) -> None:
        """Replace a serving copy with a fresh load of the same version; on failure keep the old copy."""
        if path is None:
            return
        try:
            runtime = await asyncio.to_thread(self._load_version, path, self._signature_name, config)
        except ModelLoadError as exc:
            metrics.LOAD_FAILURES.labels(model=current.model).inc()
            log.error(
                "reload failed; the loaded copy keeps serving",
                extra={"fields": {"model": current.model, "version": current.version, "error": str(exc)}},
            )
            return
        self._registry.put(dataclasses.replace(current, config=config, servable=runtime))
        await self._on_retire(current)
        fields = {"model": current.model, "version": current.version, "runtime": runtime.runtime}
        log.info("model version reloaded", extra={"fields": fields})

    async def _unload_versions(self, model: str, numbers: set[int]) -> None:
        for version in self._registry.versions(model):
            if version.version not in numbers:
                continue
            if version.state is VersionState.AVAILABLE:
                self._registry.put(dataclasses.replace(version, state=VersionState.UNLOADING))
                await self._on_retire(version)
            self._registry.remove(model, version.version)
            log.info("model version unloaded", extra={"fields": {"model": model, "version": version.version}})
        if numbers:
            gc.collect()  # the SavedModel's graph holds reference cycles: free its memory now


def _number(model: str, version: str, versions: list[VersionPath]) -> int:
    number = parse_version(version)
    if number not in {v.version for v in versions}:
        on_disk = sorted(v.version for v in versions)
        raise NotFoundError(f"model {quote(model)} has no complete version {number} on disk (versions: {on_disk})")
    return number
