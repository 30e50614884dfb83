"""JSON-lines logging with the OpenTelemetry trace and span ids of the current span."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``process_fields`` (such as a worker's index) go on every record,
    ``extra={"fields": {...}}`` adds keys to one."""

    def __init__(self, process_fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._process_fields = dict(process_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        entry.update(self._process_fields)
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, process_fields: Mapping[str, Any] | None = None) -> None:
    """Send every log record to stderr as JSON lines, each with ``process_fields``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
