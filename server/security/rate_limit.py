"""Token buckets keyed by caller: per-key request rates, and per-address failed authentications.

A key over its rate is refused at once with RESOURCE_EXHAUSTED and a
google.rpc.RetryInfo saying when a token will be back; other keys are not
affected. A bucket may go into debt: a call is admitted while its bucket holds
a token, then charged its whole cost, so a cost larger than the burst is
admitted too and the caller waits the debt off. Runs on the event loop only,
so it needs no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tensorgate.server.errors import RateLimitedError, quote

# Buckets kept at most; beyond it, the full ones (which hold no state worth keeping) are dropped, so that
# callers from ever new addresses cannot grow the table without bound.
MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate_per_s`` tokens per second per key, with bursts of up to ``burst``; ``unit`` names a token."""

    def __init__(self, rate_per_s: float, burst: int, unit: str = "requests") -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._unit = unit
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, cost: int = 1) -> None:
        """Charge ``cost`` tokens to ``key``'s bucket, or raise RateLimitedError if it holds no token."""
        bucket = self._refilled(key)
        self._admit(key, bucket)
        bucket.tokens -= cost

    def check(self, key: str) -> None:
        """Raise RateLimitedError when ``key``'s bucket holds no whole token; charge nothing."""
        self._admit(key, self._refilled(key))

    def charge(self, key: str, cost: int = 1) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, into debt if need be."""
        self._refilled(key).tokens -= cost

    def _admit(self, key: str, bucket: _Bucket) -> None:
        if bucket.tokens < 1:
            retry_after_s = (1 - bucket.tokens) / self._rate
            raise RateLimitedError(
                f"rate limit of {self._rate:g} {self._unit}/s for {quote(key)} exceeded; "
                f"retry in {retry_after_s:.2f} s",
                retry_after_s=retry_after_s,
            )

    def _refilled(self, key: str) -> _Bucket:
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._drop_full(now)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        return bucket

    def _drop_full(self, now: float) -> None:
        full = [key for key, b in self._buckets.items() if b.tokens + (now - b.updated) * self._rate >= self._burst]
        for key in full:
            del self._buckets[key]
