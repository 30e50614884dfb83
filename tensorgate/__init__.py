"""tensorgate: a model server for TensorFlow SavedModels, and its clients.

``pip install tensorgate`` installs the client (:mod:`tensorgate.clients`) and the protocol's messages
(:mod:`tensorgate.v1`); ``tensorgate[server]`` (or ``[server-gpu]``) adds the server (:mod:`tensorgate.server`) and
the gateway (:mod:`tensorgate.gateway`).
"""
