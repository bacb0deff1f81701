"""Storage backends behind the `Store` bundle in `base.py`."""

from __future__ import annotations

from headwater.config import Settings
from headwater.storage.base import Store
from headwater.storage.sqlite import open_sqlite_store


def open_store(settings: Settings) -> Store:
    return open_sqlite_store(
        settings.data_dir, queue_max_events=settings.queue_max_events, partitions=settings.partitions
    )
