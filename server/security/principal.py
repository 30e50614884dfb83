"""Who calls and what they may do: the scopes every RPC is authorized against, and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass

from tensorgate.server.errors import PermissionDeniedError, quote

PREDICT = "predict"  # inference, status and metadata
ADMIN = "admin"  # load, unload, reload, labels
SCOPES = (PREDICT, ADMIN)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's or token subject's name (for logs) and what it may do."""

    name: str
    scopes: frozenset[str]
    models: frozenset[str] = frozenset()  # empty = every model

    def check_model(self, model: str) -> None:
        """PERMISSION_DENIED unless this caller may use ``model``."""
        if self.models and model not in self.models:
            raise PermissionDeniedError(f"{self.name!r} may not use model {quote(model)}")
