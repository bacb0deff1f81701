"""`Rebuild` on SQLite: a scratch file per partition, each swapped into its partition's file
with one transaction.

A scratch file holds empty copies of the rebuilt tables (the same DDL, read from the live
file) and a copy of the challenge numbers, so the rebuilt progress rows mean the same
challenges. The swap attaches it to a connection of its own on the live file and, under the
write lock, replaces every rebuilt table with the scratch one and sets the partition's
checkpoints. Workers that had gone further see their checkpoint moved, and apply the rest of
the log again on the new state (with the same ids, so nothing is done twice). Partitions
share no state, so each one's swap stands alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from headwater.storage.derived import RebuildBusy, StateReads
from headwater.storage.effects import Effects
from headwater.storage.sqlite.derived_schema import REBUILT_TABLES, write_effects
from headwater.storage.sqlite.partition import SET_CHECKPOINT, PartitionFile
from headwater.storage.sqlite.state import StateReadsOn

if TYPE_CHECKING:  # derived.py opens a rebuild: imported the other way round at run time
    from headwater.storage.sqlite.derived import SqliteDerived

SWAPPED_TABLES = (*REBUILT_TABLES, "challenge_keys")
LOCK_FILE = "replay.lock"


def _take_lock(data_dir: Path) -> IO[str]:
    """One rebuild per data dir at a time; the OS releases the lock when the process ends,
    however it ends."""
    handle = (data_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RebuildBusy(f"another replay is running on {data_dir}") from None
    return handle


class _Scratch(StateReadsOn):
    """One partition's fresh state, on its scratch file."""

    def __init__(self, live: PartitionFile, path: Path) -> None:
        self.live = live
        self.path = path
        self.conn = self._create(live.path, path)

    @staticmethod
    def _create(live_path: Path, path: Path) -> sqlite3.Connection:
        marks = ",".join("?" * len(SWAPPED_TABLES))
        live = sqlite3.connect(live_path, isolation_level=None)
        try:
            ddl = live.execute(
                f"SELECT sql FROM sqlite_master WHERE tbl_name IN ({marks}) AND sql IS NOT NULL"
                " ORDER BY type = 'index', name",
                SWAPPED_TABLES,
            ).fetchall()
            keys = live.execute("SELECT num, challenge_id FROM challenge_keys").fetchall()
        finally:
            live.close()
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = OFF")  # a throwaway file: a crash means starting over
        conn.execute("PRAGMA synchronous = OFF")
        for (sql,) in ddl:
            conn.execute(sql)
        conn.executemany("INSERT INTO challenge_keys VALUES (?, ?)", keys)
        return conn

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, self.conn, *args)

    def write(self, effects: Effects) -> None:
        self.conn.execute("BEGIN")
        try:
            write_effects(self.conn, effects)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def swap(self, position: int, consumers: Sequence[str]) -> dict[str, int]:
        live = self.live
        conn = sqlite3.connect(live.path, isolation_level=None, timeout=live.busy_timeout_ms / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {live.busy_timeout_ms}")
            conn.execute("ATTACH DATABASE ? AS scratch", (str(self.path),))
            with live.other_writer():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows: dict[str, int] = {}
                    for table in SWAPPED_TABLES:
                        conn.execute(f"DELETE FROM main.{table}")
                        conn.execute(f"INSERT INTO main.{table} SELECT * FROM scratch.{table}")
                        rows[table] = conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
                    conn.executemany(SET_CHECKPOINT, [(c, live.partition, position) for c in consumers])
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            rows.pop("challenge_keys")
            return rows
        finally:
            conn.close()


class SqliteRebuild:
    def __init__(self, directory: Path, scratches: list[_Scratch], lock: IO[str]) -> None:
        self.directory = directory
        self.scratches = scratches
        self.lock = lock

    @classmethod
    async def open(cls, live: SqliteDerived) -> SqliteRebuild:
        lock = _take_lock(live.data_dir)
        directory = live.data_dir / f"rebuild-{uuid.uuid4().hex}"
        try:
            directory.mkdir()
            scratches = [
                await asyncio.to_thread(_Scratch, part, directory / f"{part.partition}.db") for part in live.parts
            ]
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            lock.close()
            raise
        return cls(directory, scratches, lock)

    def partition(self, partition: int) -> StateReads:
        return self.scratches[partition]

    async def write(self, partition: int, effects: Effects) -> None:
        await asyncio.to_thread(self.scratches[partition].write, effects)

    async def swap(self, position: int, checkpoints: Sequence[tuple[str, int]]) -> dict[str, int]:
        rows: dict[str, int] = {}
        for scratch in self.scratches:
            consumers = [c for c, p in checkpoints if p == scratch.live.partition]
            for table, count in (await asyncio.to_thread(scratch.swap, position, consumers)).items():
                rows[table] = rows.get(table, 0) + count
        return rows

    async def discard(self) -> None:
        for scratch in self.scratches:
            scratch.conn.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)
        self.lock.close()
