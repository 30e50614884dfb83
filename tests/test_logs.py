"""Log lines: JSON for collectors, text for people (``--log-format``, auto = text on a terminal), both with the
current span's trace ids and every ``extra`` key of a record."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tensorgate.server.config import ConfigError, load_config
from tensorgate.server.observability.logs import JsonFormatter, TextFormatter, resolve_format, setup_logging

from conftest import start_server


def record(**extra: object) -> logging.LogRecord:
    """A record as ``logging`` builds it for ``log.info("model loaded", extra=extra)``."""
    return logging.getLogger("tensorgate.test").makeRecord(
        "tensorgate.test", logging.INFO, __file__, 1, "model %s loaded", ("mnist",), None, extra=extra
    )


@pytest.fixture
def span() -> Iterator[trace.Span]:
    """A sampled span, current while the test runs (from a provider of its own: the process-wide one stays)."""
    span = TracerProvider().get_tracer("test").start_span("work")
    with trace.use_span(span, end_on_exit=True):
        yield span


def test_json_lines_keep_every_extra_key_and_the_trace_ids(span: trace.Span) -> None:
    line = JsonFormatter({"worker": 2}).format(
        record(fields={"model": "mnist", "version": 1}, library_key="kept", duration_s=0.5)
    )
    entry = json.loads(line)
    assert (
        entry["message"] == "model mnist loaded" and entry["level"] == "INFO" and entry["logger"] == "tensorgate.test"
    )
    assert (entry["model"], entry["version"], entry["library_key"], entry["duration_s"]) == ("mnist", 1, "kept", 0.5)
    assert entry["worker"] == 2
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    assert not {"args", "msg", "levelno", "pathname", "fields"} & set(entry)  # LogRecord's own attributes stay out


def test_text_lines_are_for_people_and_keep_the_same_fields(span: trace.Span) -> None:
    line = TextFormatter({"worker": 2}).format(record(fields={"model": "mnist"}, reason="two words", count=3))
    head, _, tail = line.partition(" model mnist loaded ")
    assert head.endswith("INFO    tensorgate.test:"), line
    pairs = dict(pair.split("=", 1) for pair in tail.replace('"two words"', "two_words").split(" "))
    assert pairs["model"] == "mnist" and pairs["count"] == "3" and pairs["worker"] == "2"
    assert pairs["reason"] == "two_words"  # a value with a space is quoted, so the pairs stay parsable
    assert pairs["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert len(pairs["span_id"]) == 16


def test_text_lines_carry_the_traceback_below() -> None:
    try:
        raise ValueError("bad version")
    except ValueError:
        failed = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "load failed", (), sys.exc_info())
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith("load failed") and rest[-1] == "ValueError: bad version"


def test_no_trace_ids_without_a_span() -> None:
    assert "trace_id" not in json.loads(JsonFormatter().format(record()))
    assert "trace_id" not in TextFormatter().format(record())


def test_auto_is_text_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal, (tmp_path / "log").open("w") as file:
        assert resolve_format("auto", terminal) == "text"
        assert resolve_format("auto", file) == "json"
        assert resolve_format("json", terminal) == "json" and resolve_format("text", file) == "text"
    os.close(leader)


def test_setup_logging_installs_the_chosen_format(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(root, "level", root.level)
    with (tmp_path / "log").open("w") as file:
        monkeypatch.setattr(sys, "stderr", file)
        setup_logging("INFO", "auto")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging("INFO", "text")
        assert isinstance(root.handlers[0].formatter, TextFormatter)


def test_log_format_is_a_setting() -> None:
    assert load_config(environ={}).log_format == "auto"
    assert load_config(flags={"log_format": "text"}, environ={}).log_format == "text"
    assert load_config(environ={"TENSORGATE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        load_config(flags={"log_format": "yaml"}, environ={})


def test_serve_logs_text_when_asked(tmp_path: Path) -> None:
    """The flag reaches the server process's logging, whose stderr (a file) would otherwise get JSON."""
    repository = tmp_path / "models"
    repository.mkdir()
    server = start_server(repository, tmp_path / "server.log", "--log-format", "text")
    assert server.stop() == 0
    lines = server.log().splitlines()
    listening = next(line for line in lines if " tensorgate.server.app: listening " in line)
    assert " INFO " in listening and f"address=127.0.0.1:{server.target.rsplit(':', 1)[1]}" in listening
    assert not any(line.startswith("{") for line in lines)
