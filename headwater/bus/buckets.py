"""Rate-limit buckets in Redis: one hash per bucket, refilled and taken from in one script."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from headwater.bus import BusError
from headwater.storage.buckets import Buckets, Taken
from headwater.storage.registry import RateLimit

if TYPE_CHECKING:
    from headwater.bus.redis import RedisBus

logger = logging.getLogger("headwater.bus")

# Timed by Redis's clock, so that API processes with skewed clocks agree. A bucket left alone
# expires once it would be full again: an idle key costs Redis nothing.
TAKE_SCRIPT = """
local burst, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 't', 'a')
local tokens = burst
if held[1] then
  tokens = math.min(burst, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * rate)
end
local granted = 0
if tokens >= cost then
  tokens = tokens - cost
  granted = 1
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'a', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {granted, tostring(tokens)}
"""
PREFIX = "headwater:bucket:"


class RedisBuckets:
    """While Redis does not answer, the store's buckets (or this process's) stand in: a
    limit is then kept per process, never lifted and never a reason to refuse an event."""

    def __init__(self, bus: RedisBus, fallback: Buckets) -> None:
        self.bus = bus
        self.fallback = fallback
        self._script = bus.client.register_script(TAKE_SCRIPT)

    async def take(self, bucket: str, cost: int, limit: RateLimit) -> Taken:
        try:
            granted, tokens = await self.bus._call(
                self._script(keys=[PREFIX + bucket], args=[limit.burst, limit.per_second, cost])
            )
        except BusError as exc:
            logger.warning("rate-limit bucket %s: Redis did not answer (%s); counting here meanwhile", bucket, exc)
            return await self.fallback.take(bucket, cost, limit)
        return Taken(bool(granted), float(tokens))
