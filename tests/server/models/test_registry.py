"""The registry answers which version serves a request: by number, by label, or the newest available one, and
says why when none can."""

from __future__ import annotations

from pathlib import Path

import pytest

from tensorgate.server.errors import InvalidArgumentError, NotFoundError, UnavailableError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.registry import ModelRegistry, ModelVersion, VersionState, parse_version

from support.fakes import FakeServable

CONFIG = ModelConfig()


def version(number: int, state: VersionState = VersionState.AVAILABLE, error: str = "") -> ModelVersion:
    servable = FakeServable() if state is VersionState.AVAILABLE else None
    return ModelVersion("m", number, Path(f"/models/m/{number}"), state, CONFIG, error, servable)


@pytest.fixture
def registry() -> ModelRegistry:
    """Model m: 1 and 2 available, 3 loading, 4 failed; labelled stable = 1 and canary = 2. Model idle: no versions."""
    registry = ModelRegistry()
    registry.put(version(1))
    registry.put(version(2))
    registry.put(version(3, VersionState.LOADING))
    registry.put(version(4, VersionState.FAILED, "warm-up failed: boom"))
    registry.set_labels("m", {"stable": 1, "canary": 2})
    registry.add_model("idle")
    return registry


def test_an_empty_version_resolves_to_the_newest_available_one(registry: ModelRegistry) -> None:
    assert registry.resolve("m", "").version == 2


def test_a_number_or_a_label_resolves_to_that_version(registry: ModelRegistry) -> None:
    assert registry.resolve("m", "1").version == 1
    assert registry.resolve("m", "stable").version == 1
    assert registry.resolve("m", "canary").version == 2


def test_a_label_follows_set_labels_at_the_next_request(registry: ModelRegistry) -> None:
    registry.set_labels("m", {"stable": 2})
    assert registry.resolve("m", "stable").version == 2
    with pytest.raises(NotFoundError, match="model 'm' has no version label 'canary'; labels: stable"):
        registry.resolve("m", "canary")


def test_a_version_that_is_not_available_is_unavailable_with_its_state(registry: ModelRegistry) -> None:
    with pytest.raises(UnavailableError, match=r"^model 'm' version 3 is loading$"):
        registry.resolve("m", "3")
    with pytest.raises(UnavailableError, match=r"^model 'm' version 4 is failed: warm-up failed: boom$"):
        registry.resolve("m", "4")


def test_no_available_version_lists_every_version_state(registry: ModelRegistry) -> None:
    registry.put(version(1, VersionState.UNLOADING))
    registry.remove("m", 2)
    with pytest.raises(UnavailableError) as raised:
        registry.resolve("m", "")
    assert str(raised.value) == (
        "model 'm' has no available version: version 4 is failed: warm-up failed: boom; version 3 is loading; "
        "version 1 is unloading"
    )
    with pytest.raises(UnavailableError, match=r"^model 'idle' has no available version: no version on disk$"):
        registry.resolve("idle", "")


def test_unknown_model_version_and_label_are_not_found(registry: ModelRegistry) -> None:
    with pytest.raises(NotFoundError, match=r"^model 'nope' not found; models: idle, m$"):
        registry.resolve("nope", "")
    with pytest.raises(NotFoundError, match=r"^model 'nope' not found; models: idle, m$"):
        registry.resolve("nope", "stable")  # an unknown model is reported before its labels
    with pytest.raises(NotFoundError, match=r"^model 'm' has no version 9; known versions: 4, 3, 2, 1$"):
        registry.resolve("m", "9")
    with pytest.raises(NotFoundError, match=r"^model 'm' has no version label 'beta'; labels: canary, stable$"):
        registry.resolve("m", "beta")
    with pytest.raises(NotFoundError, match=r"^model 'idle' has no version label 'beta'; labels: none$"):
        registry.resolve("idle", "beta")


def test_an_empty_model_name_is_no_model(registry: ModelRegistry) -> None:
    """The corridor refuses a request naming no model before it asks the registry (tests/server/protocols)."""
    with pytest.raises(NotFoundError, match=r"^model '' not found; models: "):
        registry.resolve("", "")


@pytest.mark.parametrize("text", ["0", "-1", "1" * 19])
def test_a_version_number_must_be_positive_and_fit(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="version must be a positive integer of at most 18 digits"):
        parse_version(text)


def test_find_returns_a_version_in_any_state(registry: ModelRegistry) -> None:
    assert registry.find("m", "4").state is VersionState.FAILED
    assert registry.find("m", "3").state is VersionState.LOADING


def test_snapshots_for_the_admin_api_and_the_metrics(registry: ModelRegistry) -> None:
    assert [v.version for v in registry.versions("m")] == [4, 3, 2, 1]
    assert registry.model_names() == ["idle", "m"]
    assert registry.labels("m") == {"stable": 1, "canary": 2}
    assert sorted(registry.states()) == [("m", "available"), ("m", "available"), ("m", "failed"), ("m", "loading")]
    assert sorted(registry.runtimes()) == [("m", "1", "fake"), ("m", "2", "fake")]
    assert registry.knows("idle") and not registry.knows("nope")
    assert registry.has_available()


def test_removing_versions_and_models(registry: ModelRegistry) -> None:
    for number in (1, 2):
        registry.remove("m", number)
    assert not registry.has_available()
    registry.remove_model("m")
    assert not registry.knows("m") and registry.labels("m") == {}
    with pytest.raises(NotFoundError, match="model 'm' not found"):
        registry.set_labels("m", {"stable": 1})
