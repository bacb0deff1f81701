"""Webhook secrets sealed at rest with AES-256-GCM under the server's `HEADWATER_SECRET_KEY`.

A sealed secret is `hwsealed1.<key id>.<base64url(nonce + ciphertext)>`. The key id (the first
8 hex digits of the key's SHA-256) tells a secret sealed under another key from a damaged one,
so a changed key is one clear error, not deliveries failing one by one. The endpoint's id is
the associated data: a sealed secret copied into another endpoint's row does not open there.

Without a key, secrets are stored as they are (`whsec_...`), and a secret stored in clear
opens as itself either way, which is how secrets written before a key was set keep working
until `seal_stored_secrets` seals them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:  # the settings read `SecretKey`, and the store reads the settings
    from headwater.storage.base import Store

logger = logging.getLogger("headwater.secrets")

SEALED_PREFIX = "hwsealed1."
KEY_BYTES = 32
NONCE_BYTES = 12
SETTING = "HEADWATER_SECRET_KEY"


class SecretKey:
    """The server's key: 32 bytes, never shown (a `Settings` printed or logged shows no key)."""

    __slots__ = ("id", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError("a secret key is 32 bytes")
        self.raw = raw
        self.id = hashlib.sha256(raw).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"SecretKey(id={self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and secrets.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.id)


def parse_secret_key(text: str) -> SecretKey:
    """32 bytes in base64, standard or URL-safe (`openssl rand -base64 32`)."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    return SecretKey(raw)


class SealError(Exception):
    """A stored secret that cannot be opened with the key this process has (or lacks)."""


class Sealer:
    def __init__(self, key: SecretKey | None) -> None:
        self.key = key
        self._aead = None if key is None else AESGCM(key.raw)

    def seal(self, endpoint_id: str, secret: str) -> str:
        """`secret` as it is to be stored: sealed when there is a key, as it is otherwise."""
        if self.key is None or self._aead is None:
            return secret
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())
        return f"{SEALED_PREFIX}{self.key.id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, endpoint_id: str, stored: str) -> str:
        if not stored.startswith(SEALED_PREFIX):
            return stored
        key_id, _, payload = stored.removeprefix(SEALED_PREFIX).partition(".")
        if self.key is None or self._aead is None:
            raise SealError(f"webhook secrets are sealed (key {key_id}) but {SETTING} is not set")
        if key_id != self.key.id:
            raise SealError(
                f"webhook secrets are sealed with another {SETTING} (key {key_id}; this one is key {self.key.id})"
            )
        try:
            data = base64.b64decode(payload, altchars=b"-_", validate=True)
            return self._aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], endpoint_id.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError(f"the sealed secret of webhook endpoint {endpoint_id} is damaged") from None

    def reseal(self, endpoint_id: str, stored: str) -> str | None:
        """What to store instead of `stored` at start: a clear secret sealed, once there is a key
        (None: keep it). A sealed secret must open: one that does not is a `SealError`."""
        if stored.startswith(SEALED_PREFIX):
            self.open(endpoint_id, stored)
            return None
        return None if self.key is None else self.seal(endpoint_id, stored)


async def seal_stored_secrets(store: Store, sealer: Sealer) -> None:
    """At start: seal the secrets stored in clear (or warn that they stay so), and check that
    the sealed ones open with this key."""
    sealed = await store.registry.reseal_webhook_secrets(sealer.reseal)
    if sealer.key is None:
        logger.warning(
            "%s is not set: webhook secrets are stored in clear; anyone who can read the database or a backup"
            " of it can sign webhooks as this server",
            SETTING,
        )
    elif sealed:
        logger.info("sealed the webhook secrets of %d endpoints stored in clear", sealed)
