"""Log lines on stderr, as JSON objects for log collectors or as text for people, each with the OpenTelemetry
trace and span ids of the current span and every ``extra`` key of the record."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

from opentelemetry import trace

LogFormat = Literal["json", "text", "auto"]
# What every LogRecord holds; anything else on a record came from ``extra`` (``extra={"fields": {...}}``, this
# project's habit, is spread out too).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context: trace and span ids of the current span, then every ``extra`` key."""
    fields: dict[str, Any] = {}
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    for key, value in record.__dict__.items():
        if key == "fields" and isinstance(value, Mapping):
            fields.update(value)
        elif key not in _RECORD_ATTRIBUTES:
            fields[key] = value
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object; ``process_fields`` (such as a worker's index) go on every record."""

    def __init__(self, process_fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._process_fields = dict(process_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._process_fields,
            **record_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """A record as a line for people: ``time LEVEL logger: message key=value ...``, the traceback below it."""

    def __init__(self, process_fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._process_fields = dict(process_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        fields = {**self._process_fields, **record_fields(record)}
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if pairs:
            line += f" {pairs}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    """A value as one token: quoted (JSON) when it is not a plain word, so that ``key=value`` pairs stay parsable."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and not any(c.isspace() or c in '"=' for c in text) else json.dumps(text)


def resolve_format(log_format: LogFormat, stream: Any) -> Literal["json", "text"]:
    """``auto`` is text on a terminal, where a person reads, and JSON otherwise (a file, a pipe, a collector)."""
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def setup_logging(level: str, log_format: LogFormat = "auto", process_fields: Mapping[str, Any] | None = None) -> None:
    """Send every log record to stderr in ``log_format``, each with ``process_fields``."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter if resolve_format(log_format, sys.stderr) == "json" else TextFormatter
    handler.setFormatter(formatter(process_fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
