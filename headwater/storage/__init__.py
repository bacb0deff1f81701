"""Storage backends behind the `Store` protocol in `base.py`."""

from __future__ import annotations

from headwater.config import Settings
from headwater.storage.base import Store
from headwater.storage.sqlite import SqliteStore


def open_store(settings: Settings) -> Store:
    return SqliteStore(settings.db_path, queue_max_events=settings.queue_max_events)
