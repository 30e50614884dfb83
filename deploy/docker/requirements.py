"""Print the requirements of tensorgate with one extra, from pyproject.toml alone, one per line.

    python3 deploy/docker/requirements.py pyproject.toml server > requirements.txt

The server images install these first, in a layer of their own that only a change to pyproject.toml rebuilds
(TensorFlow is most of an image), then the project itself with ``--no-deps``. The extras' references to other
extras of tensorgate (``tensorgate[server-common]``) are followed, as pip does. Standard library only: it runs on
the base image's python3 before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

SELF = re.compile(r"^tensorgate\s*\[([^\]]+)\]\s*$")


def requirements(pyproject: dict[str, Any], extra: str) -> list[str]:
    """The project's dependencies and those of ``extra`` (and of the extras it names), without duplicates."""
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    pending, seen = [extra], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        if name not in extras:
            raise SystemExit(f"pyproject.toml has no extra {name!r}")
        seen.add(name)
        for requirement in extras[name]:
            if match := SELF.match(requirement):
                pending += [part.strip() for part in match.group(1).split(",")]
            elif requirement not in found:
                found.append(requirement)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(tomllib.loads(Path(argv[1]).read_text()), argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
