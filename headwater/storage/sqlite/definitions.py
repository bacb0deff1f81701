"""Tables of client-written definitions (triggers, challenges) on SQLite.

Each row is a validated definition kept as the client wrote it, with its tenant, mode and
times. Every change bumps the one version counter (`definition_changes`), which other
processes poll to know their compiled copies are stale.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode

COLUMNS = "id, tenant, mode, definition, created_at, updated_at"


class Definition(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def mode(self) -> Mode: ...
    @property
    def definition(self) -> msgspec.Raw: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


R = TypeVar("R", bound=Definition)


VERSIONS_TABLE = "definition_changes"


def bump_version(conn: sqlite3.Connection) -> None:
    conn.execute(f"INSERT INTO {VERSIONS_TABLE} VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET version = version + 1")


class ScopeSetting:
    """One row per (tenant, mode) of a settings-like table (tenant, mode, the value as JSON,
    updated_at): created or replaced, with a version bump, like a definition."""

    def __init__(self, table: str, column: str) -> None:
        self.put_sql = (
            f"INSERT INTO {table} VALUES (?, ?, ?, ?) ON CONFLICT (tenant, mode) DO UPDATE SET"
            f" {column} = excluded.{column}, updated_at = excluded.updated_at"
        )

    def put(self, conn: sqlite3.Connection, tenant: str, mode: Mode, value: str, at: datetime) -> None:
        conn.execute(self.put_sql, (tenant, mode, value, to_us(at)))
        bump_version(conn)


class DefinitionTable(Generic[R]):
    """put / get / list / delete for one definitions table, on a connection the caller holds
    (the writer's inside its transaction for changes, a reader's for lookups)."""

    def __init__(self, table: str, record: Callable[..., R]) -> None:
        self.table = table
        self.record = record

    def _row(self, row: tuple[Any, ...]) -> R:
        id_, tenant, mode, definition, created, updated = row
        return self.record(id_, tenant, mode, msgspec.Raw(definition.encode()), from_us(created), from_us(updated))

    def put(self, conn: sqlite3.Connection, record: R) -> None:
        conn.execute(
            f"INSERT INTO {self.table} ({COLUMNS}) VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET"
            " definition = excluded.definition, updated_at = excluded.updated_at",
            (
                record.id,
                record.tenant,
                record.mode,
                bytes(record.definition).decode(),
                to_us(record.created_at),
                to_us(record.updated_at),
            ),
        )
        bump_version(conn)

    def get(self, conn: sqlite3.Connection, tenant: str, mode: Mode, id_: str) -> R | None:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM {self.table} WHERE id = ? AND tenant = ? AND mode = ?", (id_, tenant, mode)
        ).fetchone()
        return None if row is None else self._row(row)

    def list(self, conn: sqlite3.Connection, tenant: str, mode: Mode) -> list[R]:
        sql = f"SELECT {COLUMNS} FROM {self.table} WHERE tenant = ? AND mode = ? ORDER BY created_at, id"
        return [self._row(r) for r in conn.execute(sql, (tenant, mode))]

    def delete(self, conn: sqlite3.Connection, tenant: str, mode: Mode, id_: str) -> bool:
        cur = conn.execute(f"DELETE FROM {self.table} WHERE id = ? AND tenant = ? AND mode = ?", (id_, tenant, mode))
        if cur.rowcount:
            bump_version(conn)
        return cur.rowcount == 1
