"""What the routes share: settings, the store, the bus (or None), the pipeline and the authenticator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from headwater.auth import Authenticator
from headwater.bus import Bus
from headwater.config import Settings
from headwater.events import EventDraft, Rejection
from headwater.pipeline import Pipeline
from headwater.ratelimit import RateLimiter
from headwater.schemas import SchemaRegistry
from headwater.storage.base import Store
from headwater.storage.buckets import MemoryBuckets
from headwater.storage.registry import RateLimit

ItemReader = Callable[[bytes], EventDraft | Rejection]


@dataclass
class Services:
    settings: Settings
    store: Store
    pipeline: Pipeline
    auth: Authenticator
    schemas: SchemaRegistry
    # Each dialect's reader of one raw item, by dialect name: how a quarantined item is re-read on replay.
    readers: dict[str, ItemReader] = field(default_factory=dict)
    bus: Bus | None = None

    @classmethod
    def build(cls, settings: Settings, store: Store, bus: Bus | None = None) -> Services:
        schemas = SchemaRegistry(store)
        buckets = store.buckets or MemoryBuckets()
        if bus is not None:
            buckets = bus.buckets(fallback=buckets)
        default = None if settings.rate_limit is None else RateLimit(*settings.rate_limit)
        limiter = RateLimiter(store.registry, buckets, default)
        return cls(
            settings=settings,
            store=store,
            bus=bus,
            pipeline=Pipeline(store, schemas, bus, limiter),
            auth=Authenticator(store, ttl=settings.key_cache_seconds),
            schemas=schemas,
        )
