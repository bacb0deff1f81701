"""Creating API keys: the one place a key exists in clear, before only its hash is kept."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from headwater.events import Mode
from headwater.ids import hash_api_key, new_api_key, new_prefixed_id
from headwater.storage.base import Store
from headwater.storage.registry import KeyRecord, Role

DISPLAY_PREFIX_LENGTH = 12  # "hw_live_" plus four characters of the secret


class CreatedKey(msgspec.Struct):
    """The response to creating a key: the only time `key` is ever shown."""

    id: str
    key: str
    tenant: str
    role: Role
    mode: Mode
    prefix: str
    name: str | None
    created_at: datetime


async def create_key(store: Store, tenant: str, role: Role, mode: Mode, name: str | None = None) -> CreatedKey:
    """Create the tenant if it is new, then a key for it."""
    await store.registry.ensure_tenant(tenant)
    key = new_api_key(mode)
    record = KeyRecord(
        id=new_prefixed_id("key"),
        tenant=tenant,
        role=role,
        mode=mode,
        prefix=key[:DISPLAY_PREFIX_LENGTH],
        name=name,
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    await store.registry.add_key(record, hash_api_key(key))
    return CreatedKey(record.id, key, tenant, role, mode, record.prefix, name, record.created_at)
