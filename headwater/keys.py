"""API keys: their format, and creating them (the one place a key exists in clear, before only its hash is kept).

A key is `hw_<mode>_`, 32 random base62 characters and a 6-character checksum: the CRC32 of
everything before it, in base62 (GitHub's token format). The checksum lets a secret scanner
tell a Headwater key from random text, and lets the server refuse a mistyped key without
asking the store. Keys made before it have 43 URL-safe base64 characters after the prefix
and no checksum: they are told apart by their length, and keep working.
"""

from __future__ import annotations

import re
import secrets
import string
import zlib
from datetime import UTC, datetime
from typing import Literal

import msgspec

from headwater.events import Mode
from headwater.ids import hash_api_key, new_prefixed_id
from headwater.storage.base import Store
from headwater.storage.registry import KeyRecord, RateLimit, Role

DISPLAY_PREFIX_LENGTH = 12  # "hw_live_" plus four characters of the secret
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_CHARACTERS = 32  # 190 bits
CHECKSUM_CHARACTERS = 6  # 62**6 > 2**32: every CRC32 has its own spelling
PREFIX_LENGTH = len("hw_live_")
KEY_LENGTH = PREFIX_LENGTH + RANDOM_CHARACTERS + CHECKSUM_CHARACTERS
LEGACY_KEY_LENGTH = PREFIX_LENGTH + 43  # secrets.token_urlsafe(32)
# What a secret scanner looks for (README: "Keys, roles, modes").
KEY_PATTERN = re.compile(r"hw_(?:live|test)_[0-9A-Za-z]{38}(?![0-9A-Za-z_-])")
_LEGACY_BODY = re.compile(r"hw_(?:live|test)_[0-9A-Za-z_-]{43}")

KeyFormat = Literal["checksummed", "legacy", "malformed"]


def checksum(text: str) -> str:
    """The CRC32 of `text` in base62, six characters, most significant first."""
    value = zlib.crc32(text.encode())
    digits = []
    for _ in range(CHECKSUM_CHARACTERS):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def new_api_key(mode: Mode) -> str:
    body = f"hw_{mode}_" + "".join(secrets.choice(BASE62) for _ in range(RANDOM_CHARACTERS))
    return body + checksum(body)


def key_format(key: str) -> KeyFormat:
    """Which kind of key `key` could be: one with a checksum that holds, a key of the older
    format (only the store can tell whether it exists), or neither (refused without a lookup)."""
    if len(key) == KEY_LENGTH and KEY_PATTERN.fullmatch(key):
        split = KEY_LENGTH - CHECKSUM_CHARACTERS
        return "checksummed" if checksum(key[:split]) == key[split:] else "malformed"
    if len(key) == LEGACY_KEY_LENGTH and _LEGACY_BODY.fullmatch(key):
        return "legacy"
    return "malformed"


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
    publishable: bool = False
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    rate_limit: RateLimit | None = None  # the key's own, when it was made with one


async def create_key(
    store: Store,
    tenant: str,
    role: Role,
    mode: Mode,
    name: str | None = None,
    allowed_origins: list[str] | None = None,
) -> CreatedKey:
    """Create the tenant if it is new, then a key for it; with `allowed_origins`, a publishable
    (browser) key that only those origins may use."""
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
        publishable=allowed_origins is not None,
        allowed_origins=allowed_origins or [],
    )
    await store.registry.add_key(record, hash_api_key(key))
    return CreatedKey(
        record.id, key, tenant, role, mode, record.prefix, name, record.created_at,
        record.publishable, record.allowed_origins,
    )  # fmt: skip
