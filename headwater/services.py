"""What the routes share: settings, the store, the pipeline and the authenticator."""

from __future__ import annotations

from dataclasses import dataclass

from headwater.auth import Authenticator
from headwater.config import Settings
from headwater.pipeline import Pipeline
from headwater.storage.base import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    pipeline: Pipeline
    auth: Authenticator

    @classmethod
    def build(cls, settings: Settings, store: Store) -> Services:
        return cls(
            settings=settings,
            store=store,
            pipeline=Pipeline(store),
            auth=Authenticator(store, ttl=settings.key_cache_seconds),
        )
