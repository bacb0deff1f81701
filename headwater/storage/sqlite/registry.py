"""The registry on SQLite, in the main database file beside the log: tenants, keys,
schemas, triggers, type mappings, webhook endpoints, badges, challenges and settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.registry import (
    BadgeRecord,
    ChallengeRecord,
    DefinitionKind,
    Enforcement,
    GamificationSettings,
    KeyRecord,
    PreviousSecret,
    SchemaVersion,
    TriggerRecord,
    WebhookEndpoint,
    resealed,
    rotated_secrets,
)
from headwater.storage.sqlite.core import SqliteCore, Transaction
from headwater.storage.sqlite.definitions import VERSIONS_TABLE, DefinitionTable, ScopeSetting, bump_version

SCHEMAS_TABLE = """
CREATE TABLE IF NOT EXISTS schemas (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    enforcement TEXT NOT NULL,
    schema TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, type, version)
);
"""

REGISTRY_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (name),
    role TEXT NOT NULL,
    mode TEXT NOT NULL,
    prefix TEXT NOT NULL,
    name TEXT,
    key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    publishable INTEGER NOT NULL DEFAULT 0,
    allowed_origins TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, created_at);

{SCHEMAS_TABLE}

-- Bumped on every change to any definition below, so every process can tell its cache is stale.
CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS triggers (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS triggers_scope ON triggers (tenant, mode, created_at);

CREATE TABLE IF NOT EXISTS type_mappings (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    mappings TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode)
);

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    subscriptions TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secrets TEXT NOT NULL DEFAULT '[]',
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_scope ON webhook_endpoints (tenant, mode, created_at);

CREATE TABLE IF NOT EXISTS badges (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    image_url TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, key)
);

CREATE TABLE IF NOT EXISTS challenges (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS challenges_scope ON challenges (tenant, mode, created_at);

CREATE TABLE IF NOT EXISTS gamification_settings (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    settings TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode)
);
"""

TRIGGERS = DefinitionTable("triggers", TriggerRecord)
CHALLENGES = DefinitionTable("challenges", ChallengeRecord)
TYPE_MAPPINGS = ScopeSetting("type_mappings", "mappings")
SETTINGS = ScopeSetting("gamification_settings", "settings")
KEY_COLUMNS = "id, tenant, role, mode, prefix, name, created_at, revoked_at, publishable, allowed_origins"
SCHEMA_COLUMNS = "type, version, enforcement, schema, created_at"
BADGE_COLUMNS = "key, name, description, image_url, created_at, updated_at"
ENDPOINT_COLUMNS = (
    "id, tenant, mode, url, description, subscriptions, secret, previous_secrets, enabled, disabled_reason,"
    " created_at, updated_at"
)
_encode = msgspec.json.encode
_subscriptions = msgspec.json.Decoder(list[str])
_origins = _subscriptions
_previous = msgspec.json.Decoder(list[tuple[str, int]])
_settings = msgspec.json.Decoder(GamificationSettings)


def _opt_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _row_to_key(row: tuple[Any, ...]) -> KeyRecord:
    id_, tenant, role, mode, prefix, name, created, revoked, publishable, origins = row
    return KeyRecord(
        id=id_,
        tenant=tenant,
        role=role,
        mode=mode,
        prefix=prefix,
        name=name,
        created_at=from_us(created),
        revoked_at=_opt_us(revoked),
        publishable=bool(publishable),
        allowed_origins=_origins.decode(origins),
    )


def _encode_previous(previous: list[PreviousSecret]) -> str:
    return _encode([(p.secret, to_us(p.expires_at)) for p in previous]).decode()


def _decode_previous(text: str) -> list[PreviousSecret]:
    return [PreviousSecret(secret, from_us(expires)) for secret, expires in _previous.decode(text)]


def _row_to_schema(row: tuple[Any, ...]) -> SchemaVersion:
    type_, version, enforcement, schema, created = row
    return SchemaVersion(type_, version, enforcement, msgspec.Raw(schema.encode()), from_us(created))


def _row_to_endpoint(row: tuple[Any, ...]) -> WebhookEndpoint:
    id_, tenant, mode, url, description, subscriptions, secret, previous, enabled, reason, created, updated = row
    return WebhookEndpoint(
        id=id_,
        tenant=tenant,
        mode=mode,
        url=url,
        description=description,
        subscriptions=_subscriptions.decode(subscriptions),
        secret=secret,
        previous_secrets=_decode_previous(previous),
        enabled=bool(enabled),
        disabled_reason=reason,
        created_at=from_us(created),
        updated_at=from_us(updated),
    )


def _row_to_badge(row: tuple[Any, ...]) -> BadgeRecord:
    key, name, description, image_url, created, updated = row
    return BadgeRecord(key, name, description, image_url, from_us(created), from_us(updated))


def _add_columns(conn: sqlite3.Connection) -> None:
    """Columns newer than the tables of an older data dir. A webhook endpoint's one previous
    secret (and its expiry) becomes the first of its list."""
    keys = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
    endpoints = [row[1] for row in conn.execute("PRAGMA table_info(webhook_endpoints)")]
    if "publishable" in keys and "previous_secrets" in endpoints:
        return
    conn.execute("BEGIN IMMEDIATE")
    if "publishable" not in keys:
        conn.execute("ALTER TABLE api_keys ADD COLUMN publishable INTEGER NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE api_keys ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]'")
    if "previous_secrets" not in endpoints:
        conn.execute("ALTER TABLE webhook_endpoints ADD COLUMN previous_secrets TEXT NOT NULL DEFAULT '[]'")
        conn.execute(
            "UPDATE webhook_endpoints SET previous_secrets = json_array(json_array(previous_secret,"
            " previous_secret_expires_at)) WHERE previous_secret IS NOT NULL AND previous_secret_expires_at IS NOT NULL"
        )
        # Dropped rather than left empty: the old secret would otherwise stay in the file's free pages only.
        conn.execute("ALTER TABLE webhook_endpoints DROP COLUMN previous_secret")
        conn.execute("ALTER TABLE webhook_endpoints DROP COLUMN previous_secret_expires_at")
    conn.execute("COMMIT")


class RegistryTables(SqliteCore):
    SCHEMA = REGISTRY_SCHEMA

    def prepare(self, conn: sqlite3.Connection) -> None:
        super().prepare(conn)
        _add_columns(conn)

    async def definitions_version(self) -> int:
        sql = f"SELECT version FROM {VERSIONS_TABLE}"
        row = await self.read(lambda conn: conn.execute(sql).fetchone())
        return 0 if row is None else int(row[0])

    async def scopes_with(self, kind: DefinitionKind) -> set[tuple[str, Mode]]:
        table = {"triggers": "triggers", "webhooks": "webhook_endpoints WHERE enabled = 1", "challenges": "challenges"}
        sql = f"SELECT DISTINCT tenant, mode FROM {table[kind]}"
        return await self.read(lambda conn: {(t, m) for t, m in conn.execute(sql)})

    async def _changed(self, sql: str, args: tuple[Any, ...]) -> bool:
        """Run one statement in a write, bumping the version when it changed a row."""

        def run(tx: Transaction) -> bool:
            changed = tx.conn.execute(sql, args).rowcount == 1
            if changed:
                bump_version(tx.conn)
            return changed

        return await self.write(run)

    # Tenants and keys

    async def ensure_tenant(self, tenant: str) -> bool:
        now = to_us(datetime.now(UTC))

        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                "INSERT INTO tenants (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (tenant, now)
            )
            return cur.rowcount == 1

        return await self.write(run)

    async def count_tenants(self) -> int:
        row = await self.read(lambda conn: conn.execute("SELECT count(*) FROM tenants").fetchone())
        return int(row[0])

    async def publishable_origins(self) -> set[str]:
        sql = "SELECT allowed_origins FROM api_keys WHERE publishable = 1 AND revoked_at IS NULL"
        return await self.read(lambda conn: {o for (origins,) in conn.execute(sql) for o in _origins.decode(origins)})

    async def add_key(self, record: KeyRecord, key_hash: str) -> None:
        values = (
            record.id,
            record.tenant,
            record.role,
            record.mode,
            record.prefix,
            record.name,
            key_hash,
            to_us(record.created_at),
            int(record.publishable),
            _encode(record.allowed_origins).decode(),
        )
        await self.write(
            lambda tx: tx.conn.execute(
                "INSERT INTO api_keys (id, tenant, role, mode, prefix, name, key_hash, created_at, publishable,"
                " allowed_origins) VALUES (?,?,?,?,?,?,?,?,?,?)",
                values,
            )
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?"

        def run(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(sql, (key_hash,)).fetchone()
            return None if row is None else _row_to_key(row)

        return await self.read(run)

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, id"
        return await self.read(lambda conn: [_row_to_key(r) for r in conn.execute(sql, (tenant,))])

    async def revoke_key(self, tenant: str, key_id: str, at: datetime) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND tenant = ? AND revoked_at IS NULL",
                (to_us(at), key_id, tenant),
            )
            return cur.rowcount == 1

        return await self.write(run)

    # Schemas

    async def put_schema(
        self, tenant: str, mode: Mode, type_: str, schema: bytes, enforcement: Enforcement, at: datetime
    ) -> SchemaVersion:
        def run(tx: Transaction) -> SchemaVersion:
            row = tx.conn.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM schemas WHERE tenant = ? AND mode = ? AND type = ?",
                (tenant, mode, type_),
            ).fetchone()
            version = int(row[0])
            tx.conn.execute(
                f"INSERT INTO schemas ({SCHEMA_COLUMNS}, tenant, mode) VALUES (?,?,?,?,?,?,?)",
                (type_, version, enforcement, schema.decode(), to_us(at), tenant, mode),
            )
            return SchemaVersion(type_, version, enforcement, msgspec.Raw(schema), at)

        return await self.write(run)

    async def latest_schemas(self, tenant: str, mode: Mode) -> list[SchemaVersion]:
        sql = (
            f"SELECT {SCHEMA_COLUMNS} FROM schemas s WHERE tenant = ? AND mode = ? AND version = (SELECT max(version)"
            " FROM schemas WHERE tenant = s.tenant AND mode = s.mode AND type = s.type) ORDER BY type"
        )
        return await self.read(lambda conn: [_row_to_schema(r) for r in conn.execute(sql, (tenant, mode))])

    async def schema_versions(self, tenant: str, mode: Mode, type_: str) -> list[SchemaVersion]:
        sql = f"SELECT {SCHEMA_COLUMNS} FROM schemas WHERE tenant = ? AND mode = ? AND type = ? ORDER BY version"
        return await self.read(lambda conn: [_row_to_schema(r) for r in conn.execute(sql, (tenant, mode, type_))])

    # Triggers and type mappings

    async def put_trigger(self, record: TriggerRecord) -> None:
        await self.write(lambda tx: TRIGGERS.put(tx.conn, record))

    async def get_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> TriggerRecord | None:
        return await self.read(lambda conn: TRIGGERS.get(conn, tenant, mode, trigger_id))

    async def list_triggers(self, tenant: str, mode: Mode) -> list[TriggerRecord]:
        return await self.read(lambda conn: TRIGGERS.list(conn, tenant, mode))

    async def delete_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> bool:
        return await self.write(lambda tx: TRIGGERS.delete(tx.conn, tenant, mode, trigger_id))

    async def get_type_mappings(self, tenant: str, mode: Mode) -> dict[str, list[str]] | None:
        row = await self.read(
            lambda conn: conn.execute(
                "SELECT mappings FROM type_mappings WHERE tenant = ? AND mode = ?", (tenant, mode)
            ).fetchone()
        )
        return None if row is None else msgspec.json.decode(row[0], type=dict[str, list[str]])

    async def put_type_mappings(self, tenant: str, mode: Mode, mappings: dict[str, list[str]], at: datetime) -> None:
        value = _encode(mappings).decode()
        await self.write(lambda tx: TYPE_MAPPINGS.put(tx.conn, tenant, mode, value, at))

    # Webhook endpoints

    async def create_webhook(self, endpoint: WebhookEndpoint) -> None:
        row = (
            endpoint.id,
            endpoint.tenant,
            endpoint.mode,
            endpoint.url,
            endpoint.description,
            _encode(endpoint.subscriptions).decode(),
            endpoint.secret,
            _encode_previous(endpoint.previous_secrets),
            int(endpoint.enabled),
            endpoint.disabled_reason,
            to_us(endpoint.created_at),
            to_us(endpoint.updated_at),
        )
        await self._changed(f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ({','.join('?' * 12)})", row)

    async def get_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> WebhookEndpoint | None:
        sql = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ?"

        def run(conn: sqlite3.Connection) -> WebhookEndpoint | None:
            row = conn.execute(sql, (endpoint_id, tenant, mode)).fetchone()
            return None if row is None else _row_to_endpoint(row)

        return await self.read(run)

    async def list_webhooks(self, tenant: str, mode: Mode) -> list[WebhookEndpoint]:
        sql = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = ? AND mode = ? ORDER BY created_at, id"
        return await self.read(lambda conn: [_row_to_endpoint(r) for r in conn.execute(sql, (tenant, mode))])

    async def webhooks_by_id(self, endpoint_ids: set[str]) -> dict[str, WebhookEndpoint]:
        wanted = sorted(endpoint_ids)
        if not wanted:
            return {}
        sql = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id IN ({','.join('?' * len(wanted))})"
        return await self.read(lambda conn: {r[0]: _row_to_endpoint(r) for r in conn.execute(sql, wanted)})

    async def update_webhook(self, endpoint: WebhookEndpoint) -> bool:
        return await self._changed(
            "UPDATE webhook_endpoints SET url = ?, description = ?, subscriptions = ?, enabled = ?,"
            " disabled_reason = ?, updated_at = ? WHERE id = ? AND tenant = ? AND mode = ?",
            (
                endpoint.url,
                endpoint.description,
                _encode(endpoint.subscriptions).decode(),
                int(endpoint.enabled),
                endpoint.disabled_reason,
                to_us(endpoint.updated_at),
                endpoint.id,
                endpoint.tenant,
                endpoint.mode,
            ),
        )

    async def disable_webhook(self, endpoint_id: str, reason: str, at: datetime) -> bool:
        return await self._changed(
            "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?"
            " WHERE id = ? AND enabled = 1",
            (reason, to_us(at), endpoint_id),
        )

    async def rotate_webhook_secret(
        self, tenant: str, mode: Mode, endpoint_id: str, secret: str, previous_expires_at: datetime, at: datetime
    ) -> WebhookEndpoint | Literal["too_many"] | None:
        select = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ?"

        def run(tx: Transaction) -> WebhookEndpoint | Literal["too_many"] | None:
            row = tx.conn.execute(select, (endpoint_id, tenant, mode)).fetchone()
            if row is None:
                return None
            endpoint = _row_to_endpoint(row)
            previous = rotated_secrets(endpoint, secret, previous_expires_at, at)
            if previous is None:
                return "too_many"
            tx.conn.execute(
                "UPDATE webhook_endpoints SET secret = ?, previous_secrets = ?, updated_at = ? WHERE id = ?",
                (secret, _encode_previous(previous), to_us(at), endpoint_id),
            )
            return msgspec.structs.replace(endpoint, secret=secret, previous_secrets=previous, updated_at=at)

        return await self.write(run)

    async def reseal_webhook_secrets(self, reseal: Callable[[str, str], str | None]) -> int:
        select = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints"

        def run(tx: Transaction) -> int:
            changed = 0
            for endpoint in [_row_to_endpoint(r) for r in tx.conn.execute(select)]:
                secret, previous = resealed(endpoint, reseal)
                if secret is not None:
                    tx.conn.execute(
                        "UPDATE webhook_endpoints SET secret = ?, previous_secrets = ? WHERE id = ?",
                        (secret, _encode_previous(previous), endpoint.id),
                    )
                    changed += 1
            return changed

        return await self.write(run)

    async def delete_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> bool:
        return await self._changed(
            "DELETE FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ?", (endpoint_id, tenant, mode)
        )

    # Badges

    async def create_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        return await self._changed(
            f"INSERT OR IGNORE INTO badges (tenant, mode, {BADGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            (
                tenant,
                mode,
                badge.key,
                badge.name,
                badge.description,
                badge.image_url,
                to_us(badge.created_at),
                to_us(badge.updated_at),
            ),
        )

    async def update_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        return await self._changed(
            "UPDATE badges SET name = ?, description = ?, image_url = ?, updated_at = ?"
            " WHERE tenant = ? AND mode = ? AND key = ?",
            (badge.name, badge.description, badge.image_url, to_us(badge.updated_at), tenant, mode, badge.key),
        )

    async def get_badge(self, tenant: str, mode: Mode, key: str) -> BadgeRecord | None:
        sql = f"SELECT {BADGE_COLUMNS} FROM badges WHERE tenant = ? AND mode = ? AND key = ?"

        def run(conn: sqlite3.Connection) -> BadgeRecord | None:
            row = conn.execute(sql, (tenant, mode, key)).fetchone()
            return None if row is None else _row_to_badge(row)

        return await self.read(run)

    async def list_badges(self, tenant: str, mode: Mode) -> list[BadgeRecord]:
        sql = f"SELECT {BADGE_COLUMNS} FROM badges WHERE tenant = ? AND mode = ? ORDER BY key"
        return await self.read(lambda conn: [_row_to_badge(r) for r in conn.execute(sql, (tenant, mode))])

    async def delete_badge(self, tenant: str, mode: Mode, key: str) -> bool:
        return await self._changed("DELETE FROM badges WHERE tenant = ? AND mode = ? AND key = ?", (tenant, mode, key))

    # Challenges and settings

    async def put_challenge(self, record: ChallengeRecord) -> None:
        await self.write(lambda tx: CHALLENGES.put(tx.conn, record))

    async def get_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> ChallengeRecord | None:
        return await self.read(lambda conn: CHALLENGES.get(conn, tenant, mode, challenge_id))

    async def list_challenges(self, tenant: str, mode: Mode) -> list[ChallengeRecord]:
        return await self.read(lambda conn: CHALLENGES.list(conn, tenant, mode))

    async def delete_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> bool:
        return await self.write(lambda tx: CHALLENGES.delete(tx.conn, tenant, mode, challenge_id))

    async def get_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None:
        row = await self.read(
            lambda conn: conn.execute(
                "SELECT settings FROM gamification_settings WHERE tenant = ? AND mode = ?", (tenant, mode)
            ).fetchone()
        )
        return None if row is None else _settings.decode(row[0])

    async def put_settings(self, tenant: str, mode: Mode, settings: GamificationSettings, at: datetime) -> None:
        value = _encode(settings).decode()
        await self.write(lambda tx: SETTINGS.put(tx.conn, tenant, mode, value, at))
