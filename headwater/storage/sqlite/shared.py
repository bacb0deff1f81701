"""What the partitions of derived state share, in its own file (`derived.db`): which workers
are alive, the catalog's lease, and the catalog the catalog consumer folds from the whole log."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.effects import EffectBatch
from headwater.storage.records import CatalogEntry
from headwater.storage.sqlite.core import Transaction
from headwater.storage.sqlite.derived_schema import SHARED_SCHEMA
from headwater.storage.sqlite.leases import LeasedFile
from headwater.storage.sqlite.partition import apply_batch, batch_size


class SharedFile(LeasedFile):
    SCHEMA = SHARED_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("synchronous", "NORMAL")
        super().__init__(*args, **kwargs)

    async def apply(self, batch: EffectBatch) -> bool:
        return await self.write(lambda tx: apply_batch(tx.conn, batch), size=batch_size(batch))

    async def heartbeat(self, owner: str, now: datetime, until: datetime) -> list[str]:
        def run(tx: Transaction) -> list[str]:
            tx.conn.execute(
                "INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
                (owner, to_us(until)),
            )
            tx.conn.execute("DELETE FROM workers WHERE expires_at <= ?", (to_us(now),))
            return [row[0] for row in tx.conn.execute("SELECT owner FROM workers ORDER BY owner")]

        return await self.write(run, first=True)

    async def leave(self, owner: str) -> None:
        def run(tx: Transaction) -> None:
            tx.conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            tx.conn.execute("DELETE FROM workers WHERE owner = ?", (owner,))

        await self.write(run)

    # The catalog

    async def list_catalog(self, tenant: str, mode: Mode) -> list[CatalogEntry]:
        def run(conn: sqlite3.Connection) -> list[CatalogEntry]:
            properties: dict[str, dict[str, list[str]]] = {}
            for type_, name, json_type in conn.execute(
                "SELECT type, name, json_type FROM catalog_properties WHERE tenant = ? AND mode = ?"
                " ORDER BY type, name, json_type",
                (tenant, mode),
            ):
                properties.setdefault(type_, {}).setdefault(name, []).append(json_type)
            return [
                CatalogEntry(type_, count, from_us(first), from_us(last), violations, properties.get(type_, {}))
                for type_, count, first, last, violations in conn.execute(
                    "SELECT type, count, first_seen, last_seen, violations FROM catalog"
                    " WHERE tenant = ? AND mode = ? ORDER BY type",
                    (tenant, mode),
                )
            ]

        return await self.read(run)

    async def catalog_types(self, scopes: Sequence[tuple[str, Mode]]) -> set[tuple[str, Mode, str]]:
        def run(conn: sqlite3.Connection) -> set[tuple[str, Mode, str]]:
            found: set[tuple[str, Mode, str]] = set()
            for tenant, mode in set(scopes):
                rows = conn.execute("SELECT type FROM catalog WHERE tenant = ? AND mode = ?", (tenant, mode))
                found.update((tenant, mode, row[0]) for row in rows)
            return found

        return await self.read(run)
