"""The ``tensorgate`` command (also ``python -m tensorgate``): every command where the server is installed
(``tensorgate[server]``), the client's commands where only the client is."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _command() -> Callable[[Sequence[str] | None], int]:
    try:
        from tensorgate.server.commands.cli import main
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("tensorgate"):
            raise  # a module of ours missing is a broken install, not a client-only one
        from tensorgate.clients.cli import main
    return main


def main(argv: Sequence[str] | None = None) -> int:
    return _command()(argv)


if __name__ == "__main__":
    sys.exit(main())
