"""`Rebuild` on SQLite: a scratch file beside `derived.db`, swapped in with one transaction.

The scratch file holds empty copies of the rebuilt tables (the same DDL, read from the live
file) and a copy of the challenge numbers, so the rebuilt progress rows mean the same
challenges. The swap attaches it to a connection of its own on the live file and, under
the write lock, replaces every rebuilt table with the scratch one and sets the checkpoints.
Workers that had gone further see their checkpoint moved, and apply the rest of the log
again on the new state (with the same ids, so nothing is done twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from headwater.storage.derived import RebuildBusy
from headwater.storage.effects import Effects
from headwater.storage.sqlite.derived import SET_CHECKPOINT, SqliteDerived
from headwater.storage.sqlite.derived_schema import REBUILT_TABLES, write_effects
from headwater.storage.sqlite.state import StateReadsOn

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


class SqliteRebuild(StateReadsOn):
    def __init__(self, live: SqliteDerived, path: Path, conn: sqlite3.Connection, lock: IO[str]) -> None:
        self.live = live
        self.path = path
        self.conn = conn
        self.lock = lock

    @classmethod
    async def open(cls, live: SqliteDerived) -> SqliteRebuild:
        lock = _take_lock(live.path.parent)
        path = live.path.parent / f"rebuild-{uuid.uuid4().hex}.db"
        try:
            conn = await asyncio.to_thread(cls._create, live.path, path)
        except BaseException:
            lock.close()
            raise
        return cls(live, path, conn, lock)

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

    async def write(self, effects: Effects) -> None:
        def run() -> None:
            self.conn.execute("BEGIN")
            try:
                write_effects(self.conn, effects)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

        await asyncio.to_thread(run)

    async def swap(self, position: int, checkpoints: Sequence[tuple[str, int]]) -> dict[str, int]:
        return await asyncio.to_thread(self._swap, position, list(checkpoints))

    def _swap(self, position: int, checkpoints: list[tuple[str, int]]) -> dict[str, int]:
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
                    conn.executemany(SET_CHECKPOINT, [(c, p, position) for c, p in checkpoints])
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            rows.pop("challenge_keys")
            return rows
        finally:
            conn.close()

    async def discard(self) -> None:
        self.conn.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()
        self.lock.close()
