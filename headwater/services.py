"""What the routes share: settings, the store, the pipeline and the authenticator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from headwater.auth import Authenticator
from headwater.config import Settings
from headwater.events import EventDraft, Rejection
from headwater.pipeline import Pipeline
from headwater.schemas import SchemaRegistry
from headwater.storage.base import Store

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

    @classmethod
    def build(cls, settings: Settings, store: Store) -> Services:
        schemas = SchemaRegistry(store)
        return cls(
            settings=settings,
            store=store,
            pipeline=Pipeline(store, schemas),
            auth=Authenticator(store, ttl=settings.key_cache_seconds),
            schemas=schemas,
        )
