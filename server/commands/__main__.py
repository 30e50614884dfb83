"""``python -m tensorgate.server.commands``: the ``tensorgate`` command (as tests, bench and supervisor run it)."""

import sys

from tensorgate.server.commands.cli import main

sys.exit(main())
