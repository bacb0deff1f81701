"""API keys, roles and modes: who is calling, for which tenant, and what they may do."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable
from typing import Literal, NamedTuple

from headwater import cors
from headwater.access_log import identify
from headwater.errors import ApiError, bad_request
from headwater.events import Mode
from headwater.ids import hash_api_key
from headwater.keys import key_format
from headwater.storage.base import Store
from headwater.storage.registry import KeyRecord, Role

Permission = Literal["ingest", "read", "configure", "admin"]

ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset({"ingest", "read", "configure", "admin"}),
    "editor": frozenset({"ingest", "read", "configure"}),
    "ingest": frozenset({"ingest"}),
    "viewer": frozenset({"read"}),
}
ROLES: tuple[Role, ...] = ("admin", "editor", "ingest", "viewer")


class Principal(NamedTuple):
    key_id: str
    tenant: str
    mode: Mode
    role: Role


class Credentials(NamedTuple):
    key: str | None
    tenant_header: str | None


def _authorization_key(value: bytes) -> str | None:
    scheme, _, rest = value.partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return rest.strip().decode("latin-1")
    if scheme == b"basic":
        try:
            user = base64.b64decode(rest.strip(), validate=True).partition(b":")[0]
        except (binascii.Error, ValueError):
            return None
        return user.decode("latin-1")
    return None


def read_credentials(headers: Iterable[tuple[bytes, bytes]], write_key: str | None = None) -> Credentials:
    """The API key from `Authorization: Bearer`, `X-API-Key`, or a Basic-auth username
    (the form Segment's libraries send their write key in), plus `X-Tenant-Id`.

    `write_key` is a key the body carries (Segment's `writeKey`). A request may name its key
    in several of these places, but it must be the same key: with two different keys, or two
    `X-Tenant-Id` headers, none of them is more the caller's than the others, so the request
    is a 400 rather than the last one winning.
    """
    found: list[tuple[str, str]] = []  # (where, key)
    tenant: str | None = None
    for name, value in headers:
        if name == b"authorization":
            if key := _authorization_key(value):
                found.append(("Authorization", key))
        elif name == b"x-api-key":
            if key := value.strip().decode("latin-1"):
                found.append(("X-API-Key", key))
        elif name == b"x-tenant-id":
            if tenant is not None:
                raise bad_request("X-Tenant-Id is sent twice: send it once", "X-Tenant-Id", "duplicate")
            tenant = value.strip().decode("latin-1")
    if write_key:
        found.append(("writeKey", write_key))
    if not found:
        return Credentials(None, tenant)
    (first, key), *others = found
    for place, other in others:
        if other != key:
            places = f"two {first} headers" if place == first else f"{first} and {place}"
            raise bad_request(f"{places} carry different API keys: send one key", place, "conflict")
    return Credentials(key, tenant)


class Authenticator:
    """Resolves keys to principals, with a short cache so the hot path rarely reads the store.

    Entries live `ttl` seconds, so a key revoked by any process (the API or the CLI)
    stops working within that time. A key whose checksum does not hold (a typo, or random
    text) is refused without a lookup, and without taking a place in the cache.
    """

    def __init__(self, store: Store, ttl: float = 0.5, max_entries: int = 10_000) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        self.store_lookups = 0  # keys looked up in the store (not the cache), since start

    def forget(self) -> None:
        self._cache.clear()

    async def _lookup(self, key: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        if key_format(key) == "malformed":  # checked past the cache: a key found there was well formed
            return None
        self.store_lookups += 1
        record = await self.store.registry.find_key(hash_api_key(key))
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (record, now + self.ttl)
        return record

    async def authenticate(
        self, headers: Iterable[tuple[bytes, bytes]], permission: Permission, write_key: str | None = None
    ) -> Principal:
        key, tenant_header = read_credentials(headers, write_key)
        if not key:
            raise ApiError(
                401,
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        record = await self._lookup(key)
        if record is None or record.revoked_at is not None:
            raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        identify(record)
        if tenant_header is not None and tenant_header != record.tenant:
            raise ApiError(403, "X-Tenant-Id names a tenant this key does not belong to")
        if record.publishable and permission != "ingest":
            raise ApiError(403, f"a publishable key may only ingest, not {permission}")
        cors.admit(record)
        if permission not in ROLE_PERMISSIONS[record.role]:
            raise ApiError(403, f"the {record.role} role may not {permission}")
        return Principal(record.id, record.tenant, record.mode, record.role)
