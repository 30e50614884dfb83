"""Per-caller request rate limits: one token bucket per API key.

A caller over its rate is refused at once with RESOURCE_EXHAUSTED and a
google.rpc.RetryInfo saying when a token will be back; other callers are not
affected. Runs on the event loop only, so it needs no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tensorgate.server.errors import RateLimitedError


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate_per_s`` requests per second per key, with bursts of up to ``burst``."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, caller: str) -> None:
        """Spend one token of ``caller``'s bucket, or raise RateLimitedError."""
        now = time.monotonic()
        bucket = self._buckets.setdefault(caller, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1:
            retry_after_s = (1 - bucket.tokens) / self._rate
            raise RateLimitedError(
                f"rate limit of {self._rate:g} requests/s for {caller!r} exceeded; retry in {retry_after_s:.2f} s",
                retry_after_s=retry_after_s,
            )
        bucket.tokens -= 1
