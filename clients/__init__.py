"""tensorgate clients: the typed Python client and the command-line interface."""
