"""A model repository in object storage, mirrored into a local cache directory that the manager scans.

"What is served" stays the manager's business and "what is there" stays ``repository.scan_repository``; this
module only keeps ``<cache>/<model>/<version>/`` in line with ``<prefix>/<model>/<version>/`` in a bucket:

* a version is **complete** once its listing holds ``saved_model.pb`` (or ``saved_model.pbtxt``) at its top
  level and every object under it (keys, sizes, ETags) is the same in two listings in a row, one poll apart.
  Uploaders that write the graph file first (``aws s3 sync`` does, in key order) are thus not read half-way
  unless they pause for longer than a poll interval; to be safe, upload ``saved_model.pb`` last;
* a complete version is downloaded into a hidden directory beside its place (never scanned) and renamed into
  place only when every file is there, so the loader never sees part of a version;
* a version is immutable once downloaded (publish a new version number instead of rewriting one); the cache
  is reused across restarts;
* a version whose graph file leaves the bucket leaves the cache (the manager then retires it), and so does a
  model with no objects left; ``<model>/model.toml`` is copied whenever its ETag changes.

Several server processes may share one cache: every change is a rename, and losing a race to another process
is not an error.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from tensorgate.server.models.model_config import MODEL_CONFIG_FILE
from tensorgate.server.models.repository import MODEL_NAME, SAVED_MODEL_FILES, version_number

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"  # hidden: scan_repository never reads what is being written or removed
TRASH_PREFIX = ".retired-"


class RepositoryUnavailable(FileNotFoundError):
    """The object store could not be listed or read; the message names the location, never a credential.

    A FileNotFoundError, as a missing local repository is: at start-up ``tensorgate serve`` reports it in one line.
    """


@dataclass(frozen=True)
class StoredObject:
    """One object of the store as a listing shows it; ``key`` is relative to the repository's prefix."""

    key: str
    size: int
    etag: str


class ObjectStore(Protocol):
    """The few calls the mirror needs from a bucket (``s3.S3Store``, or a fake in the tests)."""

    location: str  # for logs: s3://bucket/prefix, never a credential

    def list(self) -> list[StoredObject]:
        """Every object under the repository's prefix. Raises RepositoryUnavailable."""
        ...

    def download(self, key: str, destination: Path) -> None:
        """Write one object (key relative to the prefix) to ``destination``. Raises RepositoryUnavailable."""
        ...


Fingerprint = frozenset[StoredObject]


@dataclass
class Listing:
    """One listing, grouped: each model's ``model.toml`` (if any) and each version's objects."""

    models: set[str] = field(default_factory=set)
    configs: dict[str, StoredObject] = field(default_factory=dict)
    versions: dict[tuple[str, int], dict[str, StoredObject]] = field(default_factory=dict)


def _parts(key: str) -> list[str] | None:
    """The components of a key, or None for a key that could leave the cache or names a hidden file."""
    parts = key.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
        return None
    return parts


def group(objects: Iterable[StoredObject]) -> Listing:
    """Sort a listing into models, model configurations and versions; other keys are ignored.

    Directory markers (keys ending in ``/``), hidden components and anything that is not
    ``<model>/model.toml`` or ``<model>/<version>/<path>`` with a valid name and version number are skipped.
    """
    listing = Listing()
    for stored in objects:
        parts = _parts(stored.key)
        if parts is None or len(parts) < 2 or not MODEL_NAME.match(parts[0]):
            continue
        model = parts[0]
        if len(parts) == 2:
            if parts[1] == MODEL_CONFIG_FILE:
                listing.models.add(model)
                listing.configs[model] = stored
            continue
        number = version_number(parts[1])
        if number is None:
            continue
        listing.models.add(model)
        listing.versions.setdefault((model, number), {})["/".join(parts[2:])] = stored
    return listing


def has_graph(objects: dict[str, StoredObject]) -> bool:
    """Whether a version's objects include its SavedModel graph file at the top level."""
    return any(name in objects for name in SAVED_MODEL_FILES)


@dataclass
class Completeness:
    """Which versions count as complete: graph file present and the same listing twice in a row."""

    _previous: dict[tuple[str, int], Fingerprint] = field(default_factory=dict)

    def complete(self, listing: Listing) -> set[tuple[str, int]]:
        """The complete versions of this listing; remembers it for the next call."""
        current = {key: frozenset(objects.values()) for key, objects in listing.versions.items()}
        done = {
            key
            for key, fingerprint in current.items()
            if has_graph(listing.versions[key]) and self._previous.get(key) == fingerprint
        }
        self._previous = current
        return done

    def forget(self, key: tuple[str, int]) -> None:
        """Make a version wait for two more identical listings (after a failed download)."""
        self._previous.pop(key, None)


class Mirror:
    """Keeps a local cache directory in line with an object store; ``sync`` is the manager's refresh hook."""

    def __init__(self, store: ObjectStore, cache: Path, settle_s: float) -> None:
        """``settle_s``: the wait between the two listings of the first ``sync``, so that a start-up serves what
        is complete at once instead of one poll later (the poll interval)."""
        self.store = store
        self.cache = cache
        self._settle_s = settle_s
        self._started = False
        self._completeness = Completeness()
        self._config_etags: dict[str, str] = {}
        cache.mkdir(parents=True, exist_ok=True)

    def sync(self) -> None:
        """List the store once and bring the cache in line. Raises RepositoryUnavailable; the cache is unchanged
        for whatever failed."""
        if not self._started:
            self._completeness.complete(group(self.store.list()))
            time.sleep(self._settle_s)
            self._started = True
        listing = group(self.store.list())
        complete = self._completeness.complete(listing)
        for model_dir in self._cached_models():
            if model_dir.name not in listing.models:
                _retire(model_dir)
                self._config_etags.pop(model_dir.name, None)
        for model in sorted(listing.models):
            (self.cache / model).mkdir(exist_ok=True)
            self._sync_config(model, listing.configs.get(model))
        for model_dir in self._cached_models():
            for version_dir in model_dir.iterdir():
                number = version_number(version_dir.name)
                objects = listing.versions.get((model_dir.name, number)) if number is not None else None
                if number is not None and version_dir.is_dir() and not (objects and has_graph(objects)):
                    _retire(version_dir)
        for key in sorted(complete):
            model, number = key
            if not (self.cache / model / str(number)).is_dir():
                try:
                    self._download(model, number, listing.versions[key])
                except RepositoryUnavailable:
                    self._completeness.forget(key)
                    raise

    def _cached_models(self) -> list[Path]:
        return [p for p in self.cache.iterdir() if p.is_dir() and MODEL_NAME.match(p.name)]

    def _sync_config(self, model: str, stored: StoredObject | None) -> None:
        target = self.cache / model / MODEL_CONFIG_FILE
        if stored is None:
            target.unlink(missing_ok=True)
            self._config_etags.pop(model, None)
            return
        if self._config_etags.get(model) == stored.etag and target.is_file():
            return
        partial = target.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex}")
        try:
            self.store.download(stored.key, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        self._config_etags[model] = stored.etag

    def _download(self, model: str, number: int, objects: dict[str, StoredObject]) -> None:
        """Download one version into a hidden directory, then rename it into place."""
        started = time.monotonic()
        partial = self.cache / model / f"{PARTIAL_PREFIX}{number}-{uuid.uuid4().hex}"
        try:
            for relative, stored in sorted(objects.items()):
                destination = partial.joinpath(*PurePosixPath(relative).parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.store.download(stored.key, destination)
            try:
                partial.rename(self.cache / model / str(number))
            except OSError:
                if not (self.cache / model / str(number)).is_dir():
                    raise
                # another server process sharing the cache renamed the same version into place first
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        fields = {
            "repository": self.store.location,
            "model": model,
            "version": number,
            "files": len(objects),
            "bytes": sum(o.size for o in objects.values()),
            "seconds": round(time.monotonic() - started, 3),
        }
        log.info("model version downloaded", extra={"fields": fields})


def _retire(path: Path) -> None:
    """Remove a cached version or model: renamed out of sight first, so no scan sees it half deleted."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return  # another server process sharing the cache removed it first
    shutil.rmtree(trash, ignore_errors=True)
    log.info("removed from the model cache", extra={"fields": {"path": str(path)}})


def open_repository(location: Path | str, cache: Path, settle_s: float) -> tuple[Path, Callable[[], None] | None]:
    """The directory the manager scans for ``--model-repository``, and the hook that refreshes it before each
    scan: a local directory as it is (no hook), an ``s3://`` URL as a mirror in ``<cache>/<bucket>/<prefix>``."""
    if isinstance(location, Path):
        return location, None
    from tensorgate.server.models.s3 import S3Store  # boto3 only where a bucket is used

    store = S3Store(location)
    root = cache.joinpath(store.bucket, *PurePosixPath(store.prefix).parts)
    log.info("model repository in object storage", extra={"fields": {"repository": store.location, "cache": str(root)}})
    return root, Mirror(store, root, settle_s).sync
