"""Token buckets for rate limits (`headwater.ratelimit`): where every API process sees them.

A store that one process serves keeps them in memory; a server store (or the bus) shares them.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol

from headwater.storage.registry import RateLimit


class Taken(NamedTuple):
    granted: bool
    tokens: float  # what the bucket holds after the request (taken from it or not)


class Buckets(Protocol):
    async def take(self, bucket: str, cost: int, limit: RateLimit) -> Taken:
        """Refill `bucket` for the time since it was last seen, then take `cost` tokens from it
        if it holds that many, atomically across every process that shares the buckets."""


class MemoryBuckets:
    """For a store that one process serves (SQLite)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, bucket: str, cost: int, limit: RateLimit) -> Taken:
        now = time.monotonic()
        tokens, at = self._buckets.get(bucket, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * limit.per_second)
        granted = tokens >= cost
        if granted:
            tokens -= cost
        self._buckets[bucket] = (tokens, now)
        return Taken(granted, tokens)
