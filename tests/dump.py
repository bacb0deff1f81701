"""Everything a store holds, as bytes, to look for what must not be there (secrets in clear).

SQLite: every row of every table of every database file in the data dir, and the raw bytes of
every file there (free pages and the WAL too). PostgreSQL: every row of every table of the
database."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg

from headwater.config import Settings


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _sqlite_rows(settings: Settings) -> dict[str, list[bytes]]:
    cells: dict[str, list[bytes]] = {}
    files = sorted(settings.data_dir.glob("*.db"))
    assert files, f"no database in {settings.data_dir}"
    for path in files:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
                cells[f"{path.name}:{table}"] = [_bytes(v) for row in rows for v in row if v is not None]
        finally:
            conn.close()
    return cells


async def _postgres_rows(url: str) -> dict[str, list[bytes]]:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        cells: dict[str, list[bytes]] = {}
        for schema, table in tables:
            rows = await conn.fetch(f'SELECT * FROM "{schema}"."{table}"')
            cells[f"{schema}.{table}"] = [_bytes(v) for row in rows for v in row.values() if v is not None]
        return cells
    finally:
        await conn.close()


def rows(settings: Settings) -> dict[str, list[bytes]]:
    """Every non-null cell of every table, by table."""
    if settings.store is None:
        return _sqlite_rows(settings)
    return asyncio.run(_postgres_rows(settings.store))


def files(settings: Settings) -> bytes:
    """SQLite only: every file of the data dir, as it is on disk."""
    return b"".join(path.read_bytes() for path in sorted(settings.data_dir.iterdir()) if path.is_file())


def found(settings: Settings, needles: list[bytes]) -> list[tuple[str, bytes]]:
    """(table, needle) for every needle some table holds."""
    held = rows(settings)
    return [(table, needle) for table, cells in held.items() for needle in needles if any(needle in c for c in cells)]
