"""Opening a data dir made by an older Headwater, which kept everything in one file.

Two steps, each safe to run again after a crash part-way:
1. `upgrade_main` (before the main file's schema): the events get their partition, computed
   once for every row with the same function the log appends with; the partition count is
   recorded; a `schemas` table without a mode gets one (`upgrade_schemas`).
2. `move_derived` (once both files are open): the derived tables still in the main file are
   copied into `derived.db` (rows that are there already are kept), the old single
   checkpoint of each consumer becomes its checkpoint in every partition, and the old tables
   are dropped from the main file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from headwater.partitions import partition_of
from headwater.storage.records import WHOLE_LOG
from headwater.storage.sqlite.core import SqliteCore
from headwater.storage.sqlite.registry import SCHEMAS_TABLE

# Derived tables an older main file may hold; their layout is unchanged in `derived.db`.
MOVED_TABLES = (
    "trigger_windows",
    "actions",
    "enrollments",
    "profiles",
    "webhook_deliveries",
    "webhook_attempts",
    "challenge_keys",
    "fact_effects",
    "challenge_progress",
    "challenge_values",
    "challenge_completions",
    "badge_awards",
    "points_ledger",
    "points_totals",
    "catalog",
    "catalog_properties",
)
# Moved only when the progress rows have the current layout (with `seq`): older ones are
# dropped, and the facts consumer rebuilds them from the log.
GAMIFICATION_TABLES = MOVED_TABLES[7:14]
OLD_ONLY = ("checkpoints", "trigger_changes", "gamification_changes", "facts")


def _columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def upgrade_schemas(conn: sqlite3.Connection) -> None:
    """A `schemas` table of the older layout, without a mode, is rebuilt with one. Its schemas
    applied to both modes; they become live-mode schemas (a test-mode key can put its own), so
    test events stop being checked by them and nothing live changes."""
    columns = _columns(conn, "schemas")
    if not columns or "mode" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE schemas RENAME TO schemas_without_mode")
    conn.execute(SCHEMAS_TABLE)
    conn.execute(
        "INSERT INTO schemas (tenant, mode, type, version, enforcement, schema, created_at)"
        " SELECT tenant, 'live', type, version, enforcement, schema, created_at FROM schemas_without_mode"
    )
    conn.execute("DROP TABLE schemas_without_mode")
    conn.execute("COMMIT")


def upgrade_main(conn: sqlite3.Connection, partitions: int) -> None:
    upgrade_schemas(conn)
    columns = _columns(conn, "events")
    if not columns or "partition" in columns:
        return
    conn.create_function("hw_partition", 4, partition_of, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE events ADD COLUMN partition INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE events SET partition = hw_partition(tenant, mode, subject, ?)", (partitions,))
    conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('partitions', ?)", (str(partitions),))
    conn.execute("COMMIT")


def _move(main_path: Path, derived: sqlite3.Connection, partitions: int) -> list[str]:
    """Copy what the main file holds into `derived` (inside the caller's transaction);
    returns the main file's tables to drop."""
    derived.execute("ATTACH DATABASE ? AS old", (str(main_path),))
    try:
        present = {row[0] for row in derived.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
        if not present & {*MOVED_TABLES, "checkpoints"}:
            return []
        current = "seq" in _columns(derived, "challenge_progress", "old") if "challenge_progress" in present else True
        derived.execute("BEGIN IMMEDIATE")
        for table in MOVED_TABLES:
            if table not in present or (table in GAMIFICATION_TABLES and not current):
                continue
            columns = ", ".join(_columns(derived, table, "old"))
            derived.execute(f"INSERT OR IGNORE INTO main.{table} ({columns}) SELECT {columns} FROM old.{table}")
        if "checkpoints" in present:
            for consumer, seq in derived.execute("SELECT consumer, seq FROM old.checkpoints").fetchall():
                if consumer == "facts" and not current:
                    continue
                parts = [WHOLE_LOG] if consumer == "catalog" else range(partitions)
                derived.executemany(
                    "INSERT OR IGNORE INTO main.checkpoints VALUES (?, ?, ?)", [(consumer, p, seq) for p in parts]
                )
        derived.execute("COMMIT")
        return sorted(present & {*MOVED_TABLES, *OLD_ONLY})
    finally:
        derived.execute("DETACH DATABASE old")


async def move_derived(main: SqliteCore, derived: SqliteCore, partitions: int) -> None:
    def run() -> None:
        conn = sqlite3.connect(derived.path, isolation_level=None, timeout=derived.busy_timeout_ms / 1000)
        try:
            with derived.other_writer():
                old_tables = _move(main.path, conn, partitions)
        finally:
            conn.close()
        if not old_tables:
            return
        conn = sqlite3.connect(main.path, isolation_level=None, timeout=main.busy_timeout_ms / 1000)
        try:
            with main.other_writer():
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DROP TRIGGER IF EXISTS challenge_key")
                for table in old_tables:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute("COMMIT")
        finally:
            conn.close()

    await asyncio.to_thread(run)
