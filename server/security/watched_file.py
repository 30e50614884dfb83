"""A configuration file that is re-read when it changes, so that API keys and JWKS rotate without a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 1.0  # how often the file's stamp is looked at
T = TypeVar("T", bound=Sized)


class WatchedFile(Generic[T]):
    """The parsed content of ``path``, parsed again whenever the file changes.

    A file that fails to read or parse (half written, broken by hand) keeps the previous content, with an
    error in the log: a bad rotation must not lock every caller out.
    """

    def __init__(self, path: Path, parse: Callable[[str], T], what: str) -> None:
        self._path = path
        self._parse = parse
        self._what = what
        self._value = parse(path.read_text())
        self._stamp = _file_stamp(path)
        self._checked = time.monotonic()
        log.info(f"{what} loaded", extra={"fields": {"file": str(path), "entries": len(self._value)}})

    def current(self) -> T:
        """The content, re-read first if the file changed (looked at most every RELOAD_CHECK_S)."""
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            self._reload_if_changed()
        return self._value

    def _reload_if_changed(self) -> None:
        try:
            stamp = _file_stamp(self._path)
            if stamp != self._stamp:
                self._value, self._stamp = self._parse(self._path.read_text()), stamp
                log.info(
                    f"{self._what} reloaded", extra={"fields": {"file": str(self._path), "entries": len(self._value)}}
                )
        except (OSError, ValueError) as exc:
            log.error(f"{self._what} unreadable; keeping the previous content", extra={"fields": {"error": str(exc)}})


def _file_stamp(path: Path) -> tuple[int, int, int]:
    """Changes whenever the file does: mtime alone can miss a same-tick rewrite; an atomic replace changes the inode."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
