"""The manager reconciles the registry with the repository and the admin calls: version policies, labels, failed
loads that never replace a working version, availability kept through a switch, unloads that drain first.

Versions on disk are empty SavedModel files; a fake loader turns them into NumPy servables."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tensorgate.server.errors import InvalidArgumentError, NotFoundError
from tensorgate.server.models.manager import ModelManager
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.registry import ModelRegistry, ModelVersion, VersionState

from support.fakes import FakeLoader, float_signature, write_versions

TIMEOUT_S = 30


@dataclass
class RetiringDataPlane:
    """The manager's retire hook (``DataPlane.retire`` in the server). Records each retired version and the state
    the registry showed for it at that moment."""

    registry: ModelRegistry
    retired: list[tuple[int, VersionState]] = field(default_factory=list)

    async def retire(self, version: ModelVersion) -> None:
        self.retired.append((version.version, self.registry.find(version.model, str(version.version)).state))


@dataclass
class Setup:
    root: Path
    registry: ModelRegistry
    dataplane: RetiringDataPlane
    loader: FakeLoader
    manager: ModelManager

    def available(self, model: str = "m") -> list[int]:
        return sorted(v.version for v in self.registry.versions(model) if v.state is VersionState.AVAILABLE)

    def state(self, version: int, model: str = "m") -> VersionState:
        return self.registry.find(model, str(version)).state


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    registry = ModelRegistry()
    dataplane = RetiringDataPlane(registry)
    loader = FakeLoader()
    manager = ModelManager(tmp_path, registry, "serving_default", ModelConfig(), loader, dataplane.retire)
    return Setup(tmp_path, registry, dataplane, loader, manager)


def run(step: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(step(), TIMEOUT_S))


@pytest.mark.parametrize(
    ("config", "served"),
    [
        ("", [3]),  # the default: latest, one version
        ("version_policy = 'latest'\nlatest_count = 2\n", [2, 3]),
        ("version_policy = 'specific'\nspecific_versions = [1, 3]\n", [1, 3]),
        ("version_policy = 'all'\n", [1, 2, 3]),
    ],
)
def test_the_version_policy_picks_what_is_served(setup: Setup, config: str, served: list[int]) -> None:
    write_versions(setup.root, "m", 1, 2, 3, config=config)
    run(setup.manager.reconcile_all)
    assert setup.available() == served
    assert sorted(v.version for v in setup.registry.versions("m")) == served  # nothing else is kept


def test_a_new_version_on_disk_replaces_the_served_one_and_the_old_one_drains(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    write_versions(setup.root, "m", 2)
    run(setup.manager.reconcile_all)
    assert setup.available() == [2]
    assert setup.dataplane.retired == [(1, VersionState.UNLOADING)]  # no request resolved to it while it drained
    assert [v.version for v in setup.registry.versions("m")] == [2]


def test_the_served_version_keeps_serving_while_its_successor_loads(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    write_versions(setup.root, "m", 2)
    setup.loader.gates[2] = gate = threading.Event()
    setup.loader.loading.clear()

    async def switch() -> None:
        reconciling = asyncio.ensure_future(setup.manager.reconcile_all())
        await asyncio.to_thread(setup.loader.loading.wait, TIMEOUT_S)
        assert setup.state(2) is VersionState.LOADING
        assert setup.registry.resolve("m", "").version == 1
        gate.set()
        await reconciling
        assert setup.registry.resolve("m", "").version == 2

    run(switch)


def test_a_version_that_fails_to_load_never_replaces_a_working_one(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    write_versions(setup.root, "m", 2)
    setup.loader.broken.add(2)
    run(setup.manager.reconcile_all)
    assert setup.available() == [1]
    assert setup.registry.resolve("m", "").version == 1
    failed = setup.registry.find("m", "2")
    assert failed.state is VersionState.FAILED and failed.error == "version 2 is broken"
    assert setup.dataplane.retired == []
    run(setup.manager.reconcile_all)
    assert setup.loader.loads.count(("m", 2)) == 1, "a failed version is retried only by reload"


def test_at_start_the_newest_older_version_that_loads_serves_in_place_of_a_broken_one(setup: Setup) -> None:
    write_versions(setup.root, "m", 1, 2, 3)
    setup.loader.broken.update({3, 2})
    run(setup.manager.reconcile_all)
    assert setup.available() == [1]
    assert setup.state(3) is VersionState.FAILED


def test_a_signature_change_that_breaks_callers_fails_unless_allowed(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    write_versions(setup.root, "m", 2)
    setup.loader.signatures[2] = float_signature(inputs=("x", "mask"))
    run(setup.manager.reconcile_all)
    assert setup.available() == [1]
    error = setup.registry.find("m", "2").error
    assert (
        error
        == "signature change would break callers (set allow_signature_change to serve it anyway): new input 'mask'"
    )
    (setup.root / "m" / "model.toml").write_text("allow_signature_change = true\n")
    run(lambda: setup.manager.reload("m", ""))
    assert setup.available() == [2]


def test_labels_from_the_configuration_and_the_admin_api(setup: Setup) -> None:
    write_versions(setup.root, "m", 1, 2, config="version_policy = 'all'\n[labels]\nstable = 1\n")
    run(setup.manager.reconcile_all)
    assert setup.registry.resolve("m", "stable").version == 1
    run(lambda: setup.manager.set_labels("m", {"stable": 2, "canary": 1}))
    assert setup.registry.labels("m") == {"stable": 2, "canary": 1}
    run(setup.manager.reconcile_all)  # admin labels outlive a reconciliation
    assert setup.registry.resolve("m", "stable").version == 2
    with pytest.raises(InvalidArgumentError, match=r"label 'beta': version 3 of model 'm' is not available"):
        run(lambda: setup.manager.set_labels("m", {"beta": 3}))
    with pytest.raises(InvalidArgumentError, match="must be a name of 1 to 128 characters, not a number"):
        run(lambda: setup.manager.set_labels("m", {"7": 1}))
    assert setup.registry.labels("m") == {"stable": 2, "canary": 1}, "a refused call changes nothing"
    run(lambda: setup.manager.reload("m", ""))  # reload clears the admin's labels
    assert setup.registry.labels("m") == {"stable": 1}


def test_unload_and_load_through_the_admin_api(setup: Setup) -> None:
    write_versions(setup.root, "m", 1, 2)
    run(setup.manager.reconcile_all)
    run(lambda: setup.manager.load("m", "1"))  # beyond the policy
    assert setup.available() == [1, 2]
    run(lambda: setup.manager.unload("m", "2"))
    assert setup.available() == [1]
    assert setup.dataplane.retired == [(2, VersionState.UNLOADING)]
    run(setup.manager.reconcile_all)  # the unload holds until a reload
    assert setup.available() == [1]
    with pytest.raises(NotFoundError, match="model 'm' version 2 is not loaded"):
        run(lambda: setup.manager.unload("m", "2"))
    with pytest.raises(NotFoundError, match=r"model 'm' has no complete version 5 on disk \(versions: \[1, 2\]\)"):
        run(lambda: setup.manager.load("m", "5"))
    run(lambda: setup.manager.unload("m", ""))
    assert setup.available() == []
    run(lambda: setup.manager.load("m", ""))  # the policy's versions again
    assert setup.available() == [2]


def test_reload_swaps_in_a_fresh_copy_and_drains_the_old_one(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    before = setup.registry.resolve("m", "").servable
    run(lambda: setup.manager.reload("m", "1"))
    after = setup.registry.resolve("m", "1")  # resolves only an AVAILABLE version
    assert after.servable is not before
    assert setup.dataplane.retired == [(1, VersionState.AVAILABLE)]  # the new copy already serves version 1


def test_a_failed_reload_keeps_the_loaded_copy(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    before = setup.registry.resolve("m", "").servable
    setup.loader.broken.add(1)
    run(lambda: setup.manager.reload("m", "1"))
    assert setup.registry.resolve("m", "1").servable is before
    assert setup.dataplane.retired == []


def test_versions_and_models_that_leave_the_disk_are_unloaded(setup: Setup) -> None:
    write_versions(setup.root, "m", 1, 2, config="version_policy = 'all'\n")
    write_versions(setup.root, "other", 1)
    run(setup.manager.reconcile_all)
    (setup.root / "m" / "2" / "saved_model.pb").unlink()
    shutil.rmtree(setup.root / "other")
    run(setup.manager.reconcile_all)
    assert setup.available() == [1]
    assert setup.registry.model_names() == ["m"]


def test_an_invalid_configuration_keeps_what_is_served(setup: Setup) -> None:
    write_versions(setup.root, "m", 1)
    run(setup.manager.reconcile_all)
    write_versions(setup.root, "m", 2, config="version_policy = 'sometimes'\n")
    run(setup.manager.reconcile_all)
    assert setup.available() == [1]
    assert ("m", 2) not in setup.loader.loads


def test_one_model_of_the_repository_is_all_that_is_served(setup: Setup) -> None:
    """ServerConfig.model_name (TF Serving's MODEL_NAME): the other models of the repository stay on disk."""
    write_versions(setup.root, "m", 1)
    write_versions(setup.root, "n", 1)
    manager = ModelManager(
        setup.root, setup.registry, "serving_default", ModelConfig(), setup.loader, setup.dataplane.retire, only="m"
    )
    run(manager.reconcile_all)
    assert setup.registry.model_names() == ["m"] and setup.available() == [1]
    with pytest.raises(NotFoundError, match="'n'"):
        run(lambda: manager.load("n", ""))
    assert setup.registry.model_names() == ["m"]
