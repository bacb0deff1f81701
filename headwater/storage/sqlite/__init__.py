"""The embedded store: SQLite files in a data dir, zero set-up.

- `headwater.db`: the event log, the quarantine and the registry (`synchronous=FULL`: an
  event is acknowledged once it is on disk).
- `derived-<partition>.db`, one per partition: everything the consumers derive for its
  subjects, their checkpoints, its lease and its dead letters; `derived.db`: what the
  partitions share (workers alive, the catalog). Both `synchronous=NORMAL`: see
  `derived_schema`.

Any number of processes on one machine may open the same data dir: the API and workers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from headwater.storage.base import Store, StoreError
from headwater.storage.sqlite.derived import SHARED_FILE, SqliteDerived, partition_file
from headwater.storage.sqlite.limits import LimitTables
from headwater.storage.sqlite.log import LogTables
from headwater.storage.sqlite.protection import ProtectionTables
from headwater.storage.sqlite.registry import RegistryTables
from headwater.storage.sqlite.upgrade import move_derived, upgrade_main

MAIN_FILE = "headwater.db"
DERIVED_FILE = SHARED_FILE


class SqliteMain(LogTables, RegistryTables, LimitTables, ProtectionTables):
    """The log and the registry share the main file: quarantine and keys are written with
    the events they belong to."""

    def upgrade(self, conn: sqlite3.Connection) -> None:
        super().upgrade(conn)
        upgrade_main(conn, self.partitions)


class SqliteLifecycle:
    def __init__(self, main: SqliteMain, derived: SqliteDerived) -> None:
        self.main = main
        self.derived = derived

    async def start(self) -> None:
        await self.main.start()
        await self.derived.start(self.main.partitions)
        await move_derived(self.main, self.derived)

    async def close(self) -> None:
        await self.derived.close()
        await self.main.close()

    async def ping(self) -> None:
        await self.main.ping()


def open_sqlite_store(data_dir: Path, *, queue_max_events: int = 200_000, partitions: int | None = None) -> Store:
    main = SqliteMain(data_dir / MAIN_FILE, queue_max_events=queue_max_events, partitions=partitions)
    derived = SqliteDerived(data_dir, queue_max_events=queue_max_events)
    return Store(log=main, registry=main, derived=derived, lifecycle=SqliteLifecycle(main, derived))


__all__ = [
    "DERIVED_FILE",
    "MAIN_FILE",
    "SqliteDerived",
    "SqliteMain",
    "StoreError",
    "open_sqlite_store",
    "partition_file",
]
