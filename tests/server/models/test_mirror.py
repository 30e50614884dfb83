"""The object-store mirror on an in-memory store: which versions count as complete, atomic downloads into the
cache, retirement of what left the bucket, keys that could escape the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tensorgate.server.models.mirror import Mirror, RepositoryUnavailable, StoredObject, group
from tensorgate.server.models.repository import scan_repository


class MemoryStore:
    """A bucket in a dict: key (relative to the prefix) to bytes; ETags are MD5s, as S3's for single PUTs."""

    location = "mem://bucket/prefix"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.failing: set[str] = set()

    def list(self) -> list[StoredObject]:
        return [StoredObject(k, len(v), hashlib.md5(v).hexdigest()) for k, v in sorted(self.objects.items())]

    def download(self, key: str, destination: Path) -> None:
        if key in self.failing or key not in self.objects:
            raise RepositoryUnavailable(f"cannot read {key!r}")
        destination.write_bytes(self.objects[key])


def upload_version(store: MemoryStore, model: str, version: int, *, graph: bool = True) -> None:
    store.objects[f"{model}/{version}/variables/variables.index"] = f"index {version}".encode()
    if graph:
        store.objects[f"{model}/{version}/saved_model.pb"] = f"graph {version}".encode()


def cached(mirror: Mirror) -> dict[str, list[int]]:
    return {model: [v.version for v in versions] for model, versions in scan_repository(mirror.cache).items()}


def hidden(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".*")]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def mirror(store: MemoryStore, tmp_path: Path) -> Mirror:
    return Mirror(store, tmp_path / "cache", settle_s=0)


def test_keys_outside_the_layout_are_ignored() -> None:
    keys = [
        "m/1/saved_model.pb",
        "m/1/../../escape/saved_model.pb",
        "m/1/.hidden",
        "m/01x/saved_model.pb",
        "m/0/saved_model.pb",
        "m/notes.txt",
        "bad name/1/saved_model.pb",
        ".m/1/saved_model.pb",
        "m/2/",
        "top.txt",
    ]
    listing = group(StoredObject(key, 1, "e") for key in keys)
    assert listing.models == {"m"}
    assert list(listing.versions) == [("m", 1)]
    assert list(listing.versions["m", 1]) == ["saved_model.pb"]


def test_a_version_in_the_bucket_at_start_is_served_after_the_first_sync(store: MemoryStore, mirror: Mirror) -> None:
    upload_version(store, "m", 1)
    store.objects["m/model.toml"] = b"version_policy = 'all'\n"
    mirror.sync()
    assert cached(mirror) == {"m": [1]}
    assert (mirror.cache / "m" / "1" / "variables" / "variables.index").read_bytes() == b"index 1"
    assert (mirror.cache / "m" / "model.toml").read_bytes() == b"version_policy = 'all'\n"
    assert hidden(mirror.cache) == []


def test_a_version_without_its_graph_file_is_ignored(store: MemoryStore, mirror: Mirror) -> None:
    upload_version(store, "m", 1, graph=False)
    for _ in range(3):
        mirror.sync()
    assert cached(mirror) == {"m": []}
    store.objects["m/1/saved_model.pb"] = b"graph"
    mirror.sync()  # the first listing with the graph file: not yet stable
    assert cached(mirror) == {"m": []}
    mirror.sync()
    assert cached(mirror) == {"m": [1]}


def test_a_version_still_changing_waits_for_two_identical_listings(store: MemoryStore, mirror: Mirror) -> None:
    mirror.sync()
    store.objects["m/1/saved_model.pb"] = b"graph"  # written first, as aws s3 sync does
    mirror.sync()
    store.objects["m/1/variables/variables.data-00000-of-00001"] = b"weights"
    mirror.sync()
    assert cached(mirror) == {"m": []}
    mirror.sync()
    assert cached(mirror) == {"m": [1]}
    assert (mirror.cache / "m" / "1" / "variables" / "variables.data-00000-of-00001").read_bytes() == b"weights"


def test_deleted_versions_and_models_leave_the_cache(store: MemoryStore, mirror: Mirror) -> None:
    upload_version(store, "m", 1)
    upload_version(store, "m", 2)
    upload_version(store, "other", 1)
    store.objects["other/model.toml"] = b""
    mirror.sync()
    assert cached(mirror) == {"m": [1, 2], "other": [1]}
    del store.objects["m/2/saved_model.pb"]  # a deletion under way: the graph file went first
    for key in [k for k in store.objects if k.startswith("other/")]:
        del store.objects[key]
    mirror.sync()
    assert cached(mirror) == {"m": [1]}
    assert hidden(mirror.cache) == []


def test_model_config_follows_the_bucket(store: MemoryStore, mirror: Mirror) -> None:
    upload_version(store, "m", 1)
    store.objects["m/model.toml"] = b"latest_count = 1\n"
    mirror.sync()
    store.objects["m/model.toml"] = b"latest_count = 2\n"
    mirror.sync()
    assert (mirror.cache / "m" / "model.toml").read_bytes() == b"latest_count = 2\n"
    del store.objects["m/model.toml"]
    mirror.sync()
    assert not (mirror.cache / "m" / "model.toml").exists()


def test_a_failed_download_leaves_nothing_and_is_retried(store: MemoryStore, mirror: Mirror) -> None:
    upload_version(store, "m", 1)
    store.failing.add("m/1/variables/variables.index")
    with pytest.raises(RepositoryUnavailable):
        mirror.sync()
    assert cached(mirror) == {"m": []}
    assert hidden(mirror.cache) == []
    store.failing.clear()
    mirror.sync()  # forgotten after the failure: one listing to see it again, then stable
    assert cached(mirror) == {"m": []}
    mirror.sync()
    assert cached(mirror) == {"m": [1]}


def test_a_cache_shared_with_another_process_is_reused(store: MemoryStore, tmp_path: Path) -> None:
    upload_version(store, "m", 1)
    Mirror(store, tmp_path / "cache", settle_s=0).sync()
    store.failing.add("m/1/saved_model.pb")  # a second process must not download it again
    second = Mirror(store, tmp_path / "cache", settle_s=0)
    second.sync()
    assert cached(second) == {"m": [1]}
