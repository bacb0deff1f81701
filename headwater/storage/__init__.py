"""Storage backends behind the `Store` bundle in `base.py`: embedded SQLite in a data dir
(the default), or PostgreSQL when `store` is a URL."""

from __future__ import annotations

from headwater.config import Settings
from headwater.storage.base import Store
from headwater.storage.sqlite import open_sqlite_store


def open_store(settings: Settings) -> Store:
    if settings.store is not None:
        from headwater.storage.postgres import open_postgres_store  # asyncpg only when asked for

        return open_postgres_store(
            settings.store,
            pool_size=settings.store_pool_size,
            queue_max_events=settings.queue_max_events,
            partitions=settings.partitions,
        )
    return open_sqlite_store(
        settings.data_dir, queue_max_events=settings.queue_max_events, partitions=settings.partitions
    )


async def migrate_store(settings: Settings) -> str:
    """Bring the store's schema up to date; what was done, in one line."""
    if settings.store is None:
        store = open_store(settings)  # a data dir is upgraded when it is opened
        await store.start()
        await store.close()
        return f"the SQLite store in {settings.data_dir} is up to date"
    from headwater.storage.postgres.core import migrate_database

    before, after = await migrate_database(settings.store)
    if before == after:
        return f"the database is up to date (schema version {after})"
    return f"migrated the database from schema version {before} to {after}"
