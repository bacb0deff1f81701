"""Keys carry a checksum: a secret scanner recognises them, and a mistyped key is refused with
401 before the store is asked. Keys of the older format, without one, keep working."""

from __future__ import annotations

import asyncio
import secrets
import zlib
from datetime import UTC, datetime

import pytest

from headwater.auth import Authenticator
from headwater.config import Settings
from headwater.errors import ApiError
from headwater.ids import hash_api_key
from headwater.keys import BASE62, KEY_PATTERN, checksum, create_key, key_format, new_api_key
from headwater.storage import open_store
from headwater.storage.registry import KeyRecord
from tests.conftest import Api

INVALID_KEY = {"error": "invalid or revoked API key", "details": []}


def typos(key: str) -> list[str]:
    """The key with one character changed, at every position, to a neighbour in base62 (and
    once to a character outside it)."""
    changed = []
    for i, c in enumerate(key):
        if c in BASE62:
            other = BASE62[(BASE62.index(c) + 1) % len(BASE62)]
            changed.append(key[:i] + other + key[i + 1 :])
    changed.append(key[:20] + "-" + key[21:])
    return changed


def legacy_key(mode: str = "live") -> str:
    """A key as Headwater made them before the checksum: 32 random bytes, URL-safe base64."""
    return f"hw_{mode}_{secrets.token_urlsafe(32)}"


def test_a_key_is_its_prefix_random_base62_and_the_crc32_of_both() -> None:
    for mode in ("live", "test"):
        key = new_api_key(mode)  # type: ignore[arg-type]
        assert len(key) == 46 and key.startswith(f"hw_{mode}_")
        assert all(c in BASE62 for c in key[8:])
        body, check = key[:-6], key[-6:]
        value = 0
        for c in check:
            value = value * 62 + BASE62.index(c)
        assert value == zlib.crc32(body.encode())
        assert checksum(body) == check
        assert key_format(key) == "checksummed"
        assert KEY_PATTERN.fullmatch(key)


def test_every_one_character_typo_is_malformed() -> None:
    key = new_api_key("live")
    changed = typos(key)
    assert len(changed) == len(key) - 2 + 1  # the two underscores of the prefix are not base62
    assert {key_format(k) for k in changed} == {"malformed"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(legacy_key(), "legacy", id="legacy"),
        pytest.param("hw_live_" + "A" * 43, "legacy", id="legacy-shaped"),
        pytest.param("hw_prod_" + "A" * 38, "malformed", id="other-mode"),
        pytest.param("hw_live_" + "A" * 39, "malformed", id="one-long"),
        pytest.param("hw_live_" + "A" * 37, "malformed", id="one-short"),
        pytest.param("hw_live_" + "A" * 42 + "!", "malformed", id="legacy-bad-character"),
        pytest.param("", "malformed", id="empty"),
        pytest.param("hw_live_" + "é" * 38, "malformed", id="non-ascii"),
        pytest.param("hw_live_" + "A" * 10_000, "malformed", id="huge"),
    ],
)
def test_key_formats(text: str, expected: str) -> None:
    assert key_format(text) == expected


def test_the_scanner_pattern_finds_keys_in_text_and_nothing_else() -> None:
    live, test, old = new_api_key("live"), new_api_key("test"), legacy_key()
    text = f"HEADWATER_KEY={live}\nexport OTHER='{test}'\nold={old}\nlonger={live}x\n"
    assert [m.group(0) for m in KEY_PATTERN.finditer(text)] == [live, test]


def test_a_mistyped_key_is_refused_without_asking_the_store(settings: Settings) -> None:
    """The Authenticator counts its store lookups; then the store is closed, and a store that
    is asked after that fails with its own error, not with a 401."""

    async def run() -> None:
        store = open_store(settings)
        await store.start()
        try:
            key = (await create_key(store, "acme", "admin", "live")).key
            auth = Authenticator(store, ttl=0)
            headers = [(b"authorization", f"Bearer {key}".encode())]
            assert (await auth.authenticate(headers, "read")).tenant == "acme"
            assert auth.store_lookups == 1
            for typo in typos(key):
                with pytest.raises(ApiError) as refused:
                    await auth.authenticate([(b"authorization", f"Bearer {typo}".encode())], "read")
                assert (refused.value.status, refused.value.error) == (401, INVALID_KEY["error"])
            assert auth.store_lookups == 1
        finally:
            await store.close()
        # Closed: a lookup now would raise the store's error; a typo still gets its 401.
        with pytest.raises(ApiError) as refused:
            await auth.authenticate([(b"x-api-key", typos(key)[5].encode())], "ingest")
        assert refused.value.status == 401
        with pytest.raises(Exception) as asked:  # whatever the backend raises, it is no 401
            await auth.authenticate(headers, "read")
        assert not isinstance(asked.value, ApiError)

    asyncio.run(run())


def test_a_mistyped_key_gets_401_over_http(api: Api) -> None:
    key = api.key("acme", "admin")
    assert api.client.get("/v1/events", headers=api.as_(key)).status_code == 200
    for typo in typos(key)[::7]:
        response = api.client.get("/v1/events", headers=api.as_(typo))
        assert (response.status_code, response.json()) == (401, INVALID_KEY)
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_key_made_before_the_checksum_still_works(api: Api) -> None:
    """Stored as `create_key` stored keys then: the SHA-256 of the key, its first 12 characters."""
    old = legacy_key()

    async def add() -> None:
        store = open_store(api.settings)
        await store.start()
        try:
            await store.registry.ensure_tenant("acme")
            record = KeyRecord("key_old", "acme", "editor", "live", old[:12], "from 2025", datetime.now(UTC))
            await store.registry.add_key(record, hash_api_key(old))
        finally:
            await store.close()

    asyncio.run(add())
    response = api.client.post("/v1/events", json={"type": "old"}, headers={"X-API-Key": old})
    assert response.status_code == 200, response.text
    listed = api.client.get("/v1/events", headers=api.as_(old)).json()["data"]
    assert [e["type"] for e in listed] == ["old"]
    # Without a checksum, only the store can refuse its typos: they still get a 401.
    typo = old[:-1] + ("A" if old[-1] != "A" else "B")
    response = api.client.get("/v1/events", headers=api.as_(typo))
    assert (response.status_code, response.json()) == (401, INVALID_KEY)
