"""The operator's side of the ``tensorgate`` command: serve, envoy-config, train, keys and the development
certificates (``cli.py`` adds the client commands of ``tensorgate.clients.cli``, so one command offers all)."""
