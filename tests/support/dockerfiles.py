"""Reading deploy/docker/*.Dockerfile as the container runtime would: its instructions and the environment of
its image. tests/test_deploy.py checks them against the configuration, tests/test_docker_run.py runs a server
with that environment."""

from __future__ import annotations

import shlex
from pathlib import Path

from tensorgate.server.config import ENV_PREFIX, TF_SERVING_VARIABLES


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def image_environment(dockerfile: Path) -> dict[str, str]:
    """The variables the ENV lines of a Dockerfile's last stage set (``KEY=value`` pairs)."""
    variables: dict[str, str] = {}
    for kind, args in instructions(dockerfile):
        if kind == "FROM":
            variables = {}
        elif kind == "ENV":
            variables |= dict(pair.split("=", 1) for pair in shlex.split(args))
    return variables


def configuration_variables(dockerfile: Path) -> dict[str, str]:
    """The variables of the image that the configuration reads (TENSORGATE_* and TF Serving's); the others (PATH,
    HOME, PYTHON*) are the container's interpreter's."""
    return {
        name: value
        for name, value in image_environment(dockerfile).items()
        if name.startswith(ENV_PREFIX) or name in TF_SERVING_VARIABLES
    }
