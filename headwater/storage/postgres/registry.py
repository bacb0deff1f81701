"""The registry on PostgreSQL: tenants, keys, schemas, triggers, type mappings, webhook
endpoints, badges, challenges and settings (tables in `schema_registry`).

Every change to a definition bumps `definition_changes` in its own transaction: API processes
and workers on other machines poll that one row to know their compiled copies are stale, so a
change is never visible without its bump, nor the bump without the change.

Free text a client wrote is stored as its UTF-8 bytes (see `schema_registry`). No id or key the
server makes holds a NUL, and a `text` parameter cannot: a lookup by one that does finds nothing
without asking.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

import asyncpg
import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.postgres.core import PgCore
from headwater.storage.postgres.limits import PgLimits
from headwater.storage.postgres.protection import PgRegistryProtection
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

KEY_COLUMNS = "id, tenant, role, mode, prefix, name, created_at, revoked_at, publishable, allowed_origins"
SCHEMA_COLUMNS = "type, version, enforcement, schema, created_at"
BADGE_COLUMNS = "key, name, description, image_url, created_at, updated_at"
DEFINITION_COLUMNS = "id, tenant, mode, definition, created_at, updated_at"
ENDPOINT_COLUMNS = (
    "id, tenant, mode, url, description, subscriptions, secret, previous_secrets, enabled, disabled_reason,"
    " created_at, updated_at"
)
BUMP = (
    "INSERT INTO definition_changes (id, version) VALUES (1, 1)"
    " ON CONFLICT (id) DO UPDATE SET version = definition_changes.version + 1"
)
SCOPES = {
    "triggers": "triggers",
    "webhooks": "webhook_endpoints WHERE enabled",
    "challenges": "challenges",
}
_encode = msgspec.json.encode
_mappings = msgspec.json.Decoder(dict[str, list[str]])
_previous = msgspec.json.Decoder(list[tuple[str, int]])
_settings = msgspec.json.Decoder(GamificationSettings)


def _count(status: str) -> int:
    """The rows a statement changed, from its status ("UPDATE 1", "INSERT 0 1")."""
    return int(status.rsplit(" ", 1)[-1])


def _storable(*ids: str) -> bool:
    return not any("\x00" in i for i in ids)


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _opt_time(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _key(row: asyncpg.Record) -> KeyRecord:
    id_, tenant, role, mode, prefix, name, created, revoked, publishable, origins = row
    return KeyRecord(
        id_, tenant, role, mode, prefix, _text(name), from_us(created), _opt_time(revoked), publishable, list(origins)
    )


def _encode_previous(previous: list[PreviousSecret]) -> str:
    return _encode([(p.secret, to_us(p.expires_at)) for p in previous]).decode()


def _decode_previous(text: str) -> list[PreviousSecret]:
    return [PreviousSecret(secret, from_us(expires)) for secret, expires in _previous.decode(text)]


def _schema(row: asyncpg.Record) -> SchemaVersion:
    type_, version, enforcement, schema, created = row
    return SchemaVersion(type_.decode(), version, enforcement, msgspec.Raw(schema), from_us(created))


def _endpoint(row: asyncpg.Record) -> WebhookEndpoint:
    id_, tenant, mode, url, description, subscriptions, secret, previous, enabled, reason, created, updated = row
    return WebhookEndpoint(
        id=id_,
        tenant=tenant,
        mode=mode,
        url=url.decode(),
        description=_text(description),
        subscriptions=subscriptions,
        secret=secret,
        previous_secrets=_decode_previous(previous),
        enabled=enabled,
        disabled_reason=reason,
        created_at=from_us(created),
        updated_at=from_us(updated),
    )


def _badge(row: asyncpg.Record) -> BadgeRecord:
    key, name, description, image_url, created, updated = row
    return BadgeRecord(key, name.decode(), _text(description), _text(image_url), from_us(created), from_us(updated))


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


class DefinitionTable(Generic[R]):
    """put / get / list / delete for a table of client-written definitions (triggers,
    challenges): the definition as the client wrote it, with its tenant, mode and times."""

    def __init__(self, core: PgCore, table: str, record: Callable[..., R]) -> None:
        self.core = core
        self.record = record
        self.put_sql = (
            f"INSERT INTO {table} ({DEFINITION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id)"
            " DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at"
        )
        self.get_sql = f"SELECT {DEFINITION_COLUMNS} FROM {table} WHERE id = $1 AND tenant = $2 AND mode = $3"
        self.list_sql = (
            f"SELECT {DEFINITION_COLUMNS} FROM {table} WHERE tenant = $1 AND mode = $2 ORDER BY created_at, id"
        )
        self.delete_sql = f"DELETE FROM {table} WHERE id = $1 AND tenant = $2 AND mode = $3"

    def _row(self, row: asyncpg.Record) -> R:
        id_, tenant, mode, definition, created, updated = row
        return self.record(id_, tenant, mode, msgspec.Raw(definition), from_us(created), from_us(updated))

    async def put(self, record: R) -> None:
        async with self.core.transaction() as conn:
            await conn.execute(
                self.put_sql,
                record.id,
                record.tenant,
                record.mode,
                bytes(record.definition),
                to_us(record.created_at),
                to_us(record.updated_at),
            )
            await conn.execute(BUMP)

    async def get(self, tenant: str, mode: Mode, id_: str) -> R | None:
        if not _storable(id_):
            return None
        row = await self.core.fetchrow(self.get_sql, id_, tenant, mode)
        return None if row is None else self._row(row)

    async def list(self, tenant: str, mode: Mode) -> list[R]:
        return [self._row(r) for r in await self.core.fetch(self.list_sql, tenant, mode)]

    async def delete(self, tenant: str, mode: Mode, id_: str) -> bool:
        if not _storable(id_):
            return False
        async with self.core.transaction() as conn:
            deleted = _count(await conn.execute(self.delete_sql, id_, tenant, mode)) == 1
            if deleted:
                await conn.execute(BUMP)
        return deleted


class PgRegistry(PgLimits, PgRegistryProtection):
    def __init__(self, core: PgCore) -> None:
        self.core = core
        self.triggers = DefinitionTable(core, "triggers", TriggerRecord)
        self.challenges = DefinitionTable(core, "challenges", ChallengeRecord)

    async def definitions_version(self) -> int:
        version = await self.core.fetchval("SELECT version FROM definition_changes")
        return 0 if version is None else int(version)

    async def scopes_with(self, kind: DefinitionKind) -> set[tuple[str, Mode]]:
        rows = await self.core.fetch(f"SELECT DISTINCT tenant, mode FROM {SCOPES[kind]}")
        return {(tenant, mode) for tenant, mode in rows}

    async def _changed(self, sql: str, *args: Any) -> bool:
        """Run one statement in a transaction, bumping the version when it changed a row."""
        async with self.core.transaction() as conn:
            changed = _count(await conn.execute(sql, *args)) == 1
            if changed:
                await conn.execute(BUMP)
        return changed

    # Tenants and keys

    async def ensure_tenant(self, tenant: str) -> bool:
        status = await self.core.execute(
            "INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            tenant,
            to_us(datetime.now(UTC)),
        )
        return _count(status) == 1

    async def count_tenants(self) -> int:
        return int(await self.core.fetchval("SELECT count(*) FROM tenants"))

    async def publishable_origins(self) -> set[str]:
        rows = await self.core.fetch(
            "SELECT DISTINCT unnest(allowed_origins) FROM api_keys WHERE publishable AND revoked_at IS NULL"
        )
        return {origin for (origin,) in rows}

    async def add_key(self, record: KeyRecord, key_hash: str) -> None:
        await self.core.execute(
            "INSERT INTO api_keys (id, tenant, role, mode, prefix, name, key_hash, created_at, publishable,"
            " allowed_origins) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            record.id,
            record.tenant,
            record.role,
            record.mode,
            record.prefix,
            _bytes(record.name),
            key_hash,
            to_us(record.created_at),
            record.publishable,
            record.allowed_origins,
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        row = await self.core.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash)
        return None if row is None else _key(row)

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        rows = await self.core.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at, id", tenant
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, tenant: str, key_id: str, at: datetime) -> bool:
        if not _storable(key_id):
            return False
        status = await self.core.execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND tenant = $3 AND revoked_at IS NULL",
            to_us(at),
            key_id,
            tenant,
        )
        return _count(status) == 1

    # Schemas

    async def put_schema(
        self, tenant: str, mode: Mode, type_: str, schema: bytes, enforcement: Enforcement, at: datetime
    ) -> SchemaVersion:
        # Two processes putting one type's schema at once may both read the same next number:
        # the second insert waits on the primary key for the first's commit, then inserts
        # nothing, and the next statement reads again. Versions stay consecutive; neither fails.
        while True:
            version = await self.core.fetchval(
                "INSERT INTO schemas (tenant, mode, type, version, enforcement, schema, created_at)"
                " SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6 FROM schemas"
                " WHERE tenant = $1 AND mode = $2 AND type = $3"
                " ON CONFLICT DO NOTHING RETURNING version",
                tenant,
                mode,
                type_.encode(),
                enforcement,
                schema,
                to_us(at),
            )
            if version is not None:
                return SchemaVersion(type_, int(version), enforcement, msgspec.Raw(schema), at)

    async def latest_schemas(self, tenant: str, mode: Mode) -> list[SchemaVersion]:
        rows = await self.core.fetch(
            f"SELECT DISTINCT ON (type) {SCHEMA_COLUMNS} FROM schemas WHERE tenant = $1 AND mode = $2"
            " ORDER BY type, version DESC",
            tenant,
            mode,
        )
        return [_schema(r) for r in rows]

    async def schema_versions(self, tenant: str, mode: Mode, type_: str) -> list[SchemaVersion]:
        rows = await self.core.fetch(
            f"SELECT {SCHEMA_COLUMNS} FROM schemas WHERE tenant = $1 AND mode = $2 AND type = $3 ORDER BY version",
            tenant,
            mode,
            type_.encode(),
        )
        return [_schema(r) for r in rows]

    # Triggers and type mappings

    async def put_trigger(self, record: TriggerRecord) -> None:
        await self.triggers.put(record)

    async def get_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> TriggerRecord | None:
        return await self.triggers.get(tenant, mode, trigger_id)

    async def list_triggers(self, tenant: str, mode: Mode) -> list[TriggerRecord]:
        return await self.triggers.list(tenant, mode)

    async def delete_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> bool:
        return await self.triggers.delete(tenant, mode, trigger_id)

    async def get_type_mappings(self, tenant: str, mode: Mode) -> dict[str, list[str]] | None:
        value = await self.core.fetchval(
            "SELECT mappings FROM type_mappings WHERE tenant = $1 AND mode = $2", tenant, mode
        )
        return None if value is None else _mappings.decode(value)

    async def put_type_mappings(self, tenant: str, mode: Mode, mappings: dict[str, list[str]], at: datetime) -> None:
        await self._changed(
            "INSERT INTO type_mappings (tenant, mode, mappings, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant, mode) DO UPDATE SET mappings = excluded.mappings, updated_at = excluded.updated_at",
            tenant,
            mode,
            _encode(mappings).decode(),
            to_us(at),
        )

    # Webhook endpoints

    async def create_webhook(self, endpoint: WebhookEndpoint) -> None:
        await self._changed(
            f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            endpoint.id,
            endpoint.tenant,
            endpoint.mode,
            endpoint.url.encode(),
            _bytes(endpoint.description),
            endpoint.subscriptions,
            endpoint.secret,
            _encode_previous(endpoint.previous_secrets),
            endpoint.enabled,
            endpoint.disabled_reason,
            to_us(endpoint.created_at),
            to_us(endpoint.updated_at),
        )

    async def get_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> WebhookEndpoint | None:
        if not _storable(endpoint_id):
            return None
        row = await self.core.fetchrow(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant = $2 AND mode = $3",
            endpoint_id,
            tenant,
            mode,
        )
        return None if row is None else _endpoint(row)

    async def list_webhooks(self, tenant: str, mode: Mode) -> list[WebhookEndpoint]:
        rows = await self.core.fetch(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 AND mode = $2 ORDER BY created_at, id",
            tenant,
            mode,
        )
        return [_endpoint(r) for r in rows]

    async def webhooks_by_id(self, endpoint_ids: set[str]) -> dict[str, WebhookEndpoint]:
        if not endpoint_ids:
            return {}
        rows = await self.core.fetch(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ANY($1::text[])", sorted(endpoint_ids)
        )
        return {r["id"]: _endpoint(r) for r in rows}

    async def update_webhook(self, endpoint: WebhookEndpoint) -> bool:
        return await self._changed(
            "UPDATE webhook_endpoints SET url = $1, description = $2, subscriptions = $3, enabled = $4,"
            " disabled_reason = $5, updated_at = $6 WHERE id = $7 AND tenant = $8 AND mode = $9",
            endpoint.url.encode(),
            _bytes(endpoint.description),
            endpoint.subscriptions,
            endpoint.enabled,
            endpoint.disabled_reason,
            to_us(endpoint.updated_at),
            endpoint.id,
            endpoint.tenant,
            endpoint.mode,
        )

    async def disable_webhook(self, endpoint_id: str, reason: str, at: datetime) -> bool:
        return await self._changed(
            "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $1, updated_at = $2"
            " WHERE id = $3 AND enabled",
            reason,
            to_us(at),
            endpoint_id,
        )

    async def rotate_webhook_secret(
        self, tenant: str, mode: Mode, endpoint_id: str, secret: str, previous_expires_at: datetime, at: datetime
    ) -> WebhookEndpoint | Literal["too_many"] | None:
        if not _storable(endpoint_id):
            return None
        # The secret signs deliveries, read fresh by `webhooks_by_id`: nothing compiled from it
        # goes stale, so no bump (as on SQLite). The row is locked so that two rotations at once
        # both keep the secret each of them rotated out.
        async with self.core.transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant = $2 AND mode = $3"
                " FOR UPDATE",
                endpoint_id,
                tenant,
                mode,
            )
            if row is None:
                return None
            endpoint = _endpoint(row)
            previous = rotated_secrets(endpoint, secret, previous_expires_at, at)
            if previous is None:
                return "too_many"
            await conn.execute(
                "UPDATE webhook_endpoints SET secret = $1, previous_secrets = $2, updated_at = $3 WHERE id = $4",
                secret,
                _encode_previous(previous),
                to_us(at),
                endpoint_id,
            )
        return msgspec.structs.replace(endpoint, secret=secret, previous_secrets=previous, updated_at=at)

    async def reseal_webhook_secrets(self, reseal: Callable[[str, str], str | None]) -> int:
        changed = 0
        async with self.core.transaction() as conn:
            rows = await conn.fetch(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints FOR UPDATE")
            for endpoint in map(_endpoint, rows):
                secret, previous = resealed(endpoint, reseal)
                if secret is not None:
                    await conn.execute(
                        "UPDATE webhook_endpoints SET secret = $1, previous_secrets = $2 WHERE id = $3",
                        secret,
                        _encode_previous(previous),
                        endpoint.id,
                    )
                    changed += 1
        return changed

    async def delete_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> bool:
        if not _storable(endpoint_id):
            return False
        return await self._changed(
            "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant = $2 AND mode = $3", endpoint_id, tenant, mode
        )

    # Badges

    async def create_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        return await self._changed(
            f"INSERT INTO badges (tenant, mode, {BADGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT DO NOTHING",
            tenant,
            mode,
            badge.key,
            badge.name.encode(),
            _bytes(badge.description),
            _bytes(badge.image_url),
            to_us(badge.created_at),
            to_us(badge.updated_at),
        )

    async def update_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        if not _storable(badge.key):
            return False
        return await self._changed(
            "UPDATE badges SET name = $1, description = $2, image_url = $3, updated_at = $4"
            " WHERE tenant = $5 AND mode = $6 AND key = $7",
            badge.name.encode(),
            _bytes(badge.description),
            _bytes(badge.image_url),
            to_us(badge.updated_at),
            tenant,
            mode,
            badge.key,
        )

    async def get_badge(self, tenant: str, mode: Mode, key: str) -> BadgeRecord | None:
        if not _storable(key):
            return None
        row = await self.core.fetchrow(
            f"SELECT {BADGE_COLUMNS} FROM badges WHERE tenant = $1 AND mode = $2 AND key = $3", tenant, mode, key
        )
        return None if row is None else _badge(row)

    async def list_badges(self, tenant: str, mode: Mode) -> list[BadgeRecord]:
        rows = await self.core.fetch(
            f"SELECT {BADGE_COLUMNS} FROM badges WHERE tenant = $1 AND mode = $2 ORDER BY key", tenant, mode
        )
        return [_badge(r) for r in rows]

    async def delete_badge(self, tenant: str, mode: Mode, key: str) -> bool:
        if not _storable(key):
            return False
        return await self._changed("DELETE FROM badges WHERE tenant = $1 AND mode = $2 AND key = $3", tenant, mode, key)

    # Challenges and settings

    async def put_challenge(self, record: ChallengeRecord) -> None:
        await self.challenges.put(record)

    async def get_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> ChallengeRecord | None:
        return await self.challenges.get(tenant, mode, challenge_id)

    async def list_challenges(self, tenant: str, mode: Mode) -> list[ChallengeRecord]:
        return await self.challenges.list(tenant, mode)

    async def delete_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> bool:
        return await self.challenges.delete(tenant, mode, challenge_id)

    async def get_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None:
        value = await self.core.fetchval(
            "SELECT settings FROM gamification_settings WHERE tenant = $1 AND mode = $2", tenant, mode
        )
        return None if value is None else _settings.decode(value)

    async def put_settings(self, tenant: str, mode: Mode, settings: GamificationSettings, at: datetime) -> None:
        await self._changed(
            "INSERT INTO gamification_settings (tenant, mode, settings, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant, mode) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
            tenant,
            mode,
            _encode(settings).decode(),
            to_us(at),
        )
