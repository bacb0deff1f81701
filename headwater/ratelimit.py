"""Rate limits: a token bucket per API key, counted in events, checked before anything is stored.

A key's limit is its own (set when it is made, or later), else its tenant's default, else the
server's (`HEADWATER_RATE_LIMIT`); a key with none of them is not limited and costs one cached
look-up. The buckets live where every API process sees them: in Redis when there is a bus, in
PostgreSQL when that is the store, and in memory with SQLite, which serves from one process.

Over the limit: 429 with `Retry-After` and the `RateLimit-Limit` (the burst),
`RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is full) headers.
A request of more events than the burst can never pass, so it gets a 413 instead.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from headwater.errors import ApiError
from headwater.events import FieldError
from headwater.metrics import metrics
from headwater.storage.buckets import Buckets
from headwater.storage.registry import RateLimit, Registry

if TYPE_CHECKING:
    from headwater.auth import Principal

CONFIG_TTL = 1.0  # a changed limit applies within this many seconds, in every process


class RateLimiter:
    def __init__(self, registry: Registry, buckets: Buckets, default: RateLimit | None) -> None:
        self.registry = registry
        self.buckets = buckets
        self.default = default
        self._config: dict[tuple[str, str], tuple[float, RateLimit | None]] = {}
        # What each bucket held after this process's last take from it, and when.
        self._seen: dict[str, tuple[float, float]] = {}
        # Until when this process's last 429 for each bucket told the client to wait.
        self._refused: dict[str, float] = {}

    def forget(self) -> None:
        """Drop the cached limits (this process changed one; others see it within CONFIG_TTL)."""
        self._config.clear()

    async def limit_for(self, principal: Principal) -> RateLimit | None:
        scope = (principal.tenant, principal.key_id)
        now = time.monotonic()
        cached = self._config.get(scope)
        if cached is not None and cached[0] > now:
            return cached[1]
        own, tenant = await self.registry.get_rate_limits(principal.tenant, principal.key_id)
        limit = own or tenant or self.default
        if len(self._config) > 100_000:  # keys come and go: never let the cache grow without end
            self._config.clear()
        self._config[scope] = (now + CONFIG_TTL, limit)
        return limit

    async def precheck(self, principal: Principal) -> None:
        """Raise the 429 before the request's body is even read when the key's bucket cannot
        hold one event now, or when this process told the key's client, in its last 429, to
        wait and that wait has not passed. The estimate (this process's last look, refilled
        since) is an upper bound, since every other process only takes from the bucket; and a
        client that honours `Retry-After` never meets the second refusal. So a flood over its
        limit that ignores `Retry-After` is refused for the cost of its headers: its bodies are
        not read (bench/fairness.py: 1,000-event batches refused after they were read and split
        took the one API loop from the quiet tenant, whose p50 was then 59 ms)."""
        limit = await self.limit_for(principal)
        if limit is None:
            return
        bucket = _bucket(principal, limit)
        seen = self._seen.get(bucket)
        if seen is None:
            return
        now = time.monotonic()
        tokens = min(float(limit.burst), seen[0] + (now - seen[1]) * limit.per_second)
        waited = self._refused.get(bucket, now) - now
        if waited > 0 or tokens < 1:
            metrics().refusals.labels(principal.tenant).inc()
            raise _refusal(limit, 1, tokens, retry=math.ceil(waited) if waited > 0 else None)

    async def check(self, principal: Principal, cost: int) -> None:
        """Take `cost` events from the key's bucket, or raise the 429 (or 413) that says why not."""
        if cost == 0:
            return
        limit = await self.limit_for(principal)
        if limit is None:
            return
        if cost > limit.burst:
            message = f"a request of {cost} events exceeds this key's rate-limit burst of {limit.burst}: send fewer"
            raise ApiError(413, message, [FieldError("", "rate_limit_burst", message)])
        bucket = _bucket(principal, limit)
        taken = await self.buckets.take(bucket, cost, limit)
        if len(self._seen) > 100_000:
            self._seen.clear()
            self._refused.clear()
        now = time.monotonic()
        self._seen[bucket] = (taken.tokens, now)
        if not taken.granted:
            refusal = _refusal(limit, cost, taken.tokens)
            self._refused[bucket] = now + int(refusal.headers["Retry-After"])
            metrics().refusals.labels(principal.tenant).inc()
            raise refusal


def _bucket(principal: Principal, limit: RateLimit) -> str:
    # A changed limit starts a bucket of its own, full.
    return f"{principal.key_id}:{limit.per_second:g}:{limit.burst}"


def _refusal(limit: RateLimit, cost: int, tokens: float, retry: int | None = None) -> ApiError:
    retry = retry or max(1, math.ceil((cost - tokens) / limit.per_second))
    message = f"rate limit of {limit.per_second:g} events/s (burst {limit.burst}) exceeded: retry in {retry} s"
    headers = {
        "Retry-After": str(retry),
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(max(0, math.floor(tokens))),
        "RateLimit-Reset": str(max(1, math.ceil((limit.burst - tokens) / limit.per_second))),
    }
    return ApiError(429, message, [FieldError("", "rate_limited", message)], headers)
