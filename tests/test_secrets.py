"""Webhook secrets at rest: sealed with HEADWATER_SECRET_KEY (AES-256-GCM) when it is set, in
clear with a warning at start when it is not; secrets stored in clear before a key was set are
sealed at start and keep signing; a key that does not open them stops the start. Every table of
the store is dumped and searched for the secrets."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.processing.webhooks import DeliveryWorker
from headwater.sealing import SEALED_PREFIX, Sealer, SealError, SecretKey, parse_secret_key
from headwater.storage import open_store
from headwater.storage.postgres.core import migrate
from headwater.storage.postgres.schema import MIGRATIONS
from headwater.storage.sqlite import MAIN_FILE
from tests import dump
from tests.conftest import free_port, make_key, run_cli
from tests.processing.test_webhooks import Receiver
from tests.servers import Postgres

KEY_TEXT = base64.b64encode(bytes(range(32))).decode()
KEY = parse_secret_key(KEY_TEXT)
OTHER_KEY = SecretKey(bytes(range(1, 33)))
NOT_SET_WARNING = (
    "HEADWATER_SECRET_KEY is not set: webhook secrets are stored in clear; anyone who can read the database or a"
    " backup of it can sign webhooks as this server"
)


def forms(secret: str) -> list[bytes]:
    """A `whsec_` secret as text, its base64 body, and the bytes it stands for."""
    body = secret.removeprefix("whsec_")
    return [secret.encode(), body.encode(), base64.b64decode(body)]


@pytest.fixture
def receiver() -> Any:
    server = Receiver()
    yield server
    server.close()


def hook_settings(settings: Settings, key: SecretKey | None) -> Settings:
    return replace(settings, secret_key=key, allow_private_webhooks=True, webhook_worker=False)


class Endpoints:
    """Registering, rotating and test-sending through the API of an app on `settings`."""

    def __init__(self, settings: Settings, receiver: Receiver) -> None:
        self.settings = settings
        self.receiver = receiver
        self.key = make_key(settings, "acme", "editor")

    def create(self, client: TestClient) -> dict[str, Any]:
        body = {"url": self.receiver.url("/hook"), "subscriptions": ["action.*"]}
        response = client.post("/v1/webhooks", json=body, headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def rotate(self, client: TestClient, endpoint_id: str) -> str:
        response = client.post(f"/v1/webhooks/{endpoint_id}/rotate", headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 200, response.text
        return str(response.json()["secret"])

    def send_test(self, client: TestClient, endpoint_id: str, settings: Settings) -> dict[str, str]:
        """Enqueue a test message, deliver it with a worker on `settings`; the request's headers."""
        response = client.post(f"/v1/webhooks/{endpoint_id}/test", headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 202, response.text
        before = len(self.receiver.requests)

        async def deliver() -> int:
            store = open_store(settings)
            await store.start()
            worker = DeliveryWorker(store, settings, jitter=0)
            try:
                return await worker.run_once()
            finally:
                await worker.stop()
                await store.close()

        assert asyncio.run(deliver()) == 1
        [received] = self.receiver.requests[before:]
        return received.headers | {"body": received.body.decode()}


def verify_each(received: dict[str, str], live: list[str], dead: tuple[str, ...] = ()) -> None:
    """One signature per live secret, in that order, each verified alone by the reference library."""
    body = received["body"]
    signatures = received["webhook-signature"].split(" ")
    assert len(signatures) == len(live)
    for secret, signature in zip(live, signatures, strict=True):
        assert Webhook(secret).verify(body, received | {"webhook-signature": signature})
    for secret in dead:
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, received)


def test_with_a_key_no_secret_is_stored_in_clear(settings: Settings, receiver: Receiver) -> None:
    sealed = hook_settings(settings, KEY)
    endpoints = Endpoints(sealed, receiver)
    with TestClient(create_app(sealed)) as client:
        endpoint = endpoints.create(client)
        first = endpoint["secret"]
        second = endpoints.rotate(client, endpoint["id"])
        third = endpoints.rotate(client, endpoint["id"])
        received = endpoints.send_test(client, endpoint["id"], sealed)
    verify_each(received, [third, second, first])
    needles = [f for s in (first, second, third) for f in forms(s)]
    assert dump.found(sealed, needles) == []
    if sealed.store is None:  # the files themselves, WAL and free pages too: nothing was ever written in clear
        raw = dump.files(sealed)
        assert [n for n in needles if n in raw] == []
    stored = dump.rows(sealed)[_endpoints_table(sealed)]
    assert any(cell.startswith(f"{SEALED_PREFIX}{KEY.id}.".encode()) for cell in stored)


def _endpoints_table(settings: Settings) -> str:
    return "headwater.db:webhook_endpoints" if settings.store is None else "public.webhook_endpoints"


def test_secrets_stored_in_clear_are_sealed_at_start_and_keep_signing(
    settings: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    clear = hook_settings(settings, None)
    endpoints = Endpoints(clear, receiver)
    with caplog.at_level(logging.WARNING, "headwater.secrets"), TestClient(create_app(clear)) as client:
        endpoint = endpoints.create(client)
        old = endpoint["secret"]
        new = endpoints.rotate(client, endpoint["id"])
    assert [r.getMessage() for r in caplog.records if r.name == "headwater.secrets"] == [NOT_SET_WARNING]
    # The dump does see them, in clear: so its finding nothing below means something.
    assert {needle for _, needle in dump.found(clear, [old.encode(), new.encode()])} == {old.encode(), new.encode()}

    sealed = replace(clear, secret_key=KEY)
    caplog.clear()
    with caplog.at_level(logging.INFO, "headwater.secrets"), TestClient(create_app(sealed)) as client:
        assert [r.getMessage() for r in caplog.records if r.name == "headwater.secrets"] == [
            "sealed the webhook secrets of 1 endpoints stored in clear"
        ]
        assert dump.found(sealed, [f for s in (old, new) for f in forms(s)]) == []
        verify_each(endpoints.send_test(client, endpoint["id"], sealed), [new, old])
    # Started again: nothing left to seal, nothing logged.
    caplog.clear()
    with caplog.at_level(logging.INFO, "headwater.secrets"), TestClient(create_app(sealed)):
        assert [r for r in caplog.records if r.name == "headwater.secrets"] == []


def test_a_key_that_does_not_open_the_secrets_stops_the_start(settings: Settings, receiver: Receiver) -> None:
    sealed = hook_settings(settings, KEY)
    with TestClient(create_app(sealed)) as client:
        Endpoints(sealed, receiver).create(client)
    with pytest.raises(SealError) as other, TestClient(create_app(replace(sealed, secret_key=OTHER_KEY))):
        pass
    assert str(other.value) == (
        f"webhook secrets are sealed with another HEADWATER_SECRET_KEY (key {KEY.id}; this one is key {OTHER_KEY.id})"
    )
    with pytest.raises(SealError) as missing, TestClient(create_app(replace(sealed, secret_key=None))):
        pass
    assert str(missing.value) == f"webhook secrets are sealed (key {KEY.id}) but HEADWATER_SECRET_KEY is not set"


def test_serve_with_a_key_that_does_not_open_the_secrets_is_one_line(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    sealed = hook_settings(settings, KEY)
    with TestClient(create_app(sealed)) as client:
        Endpoints(sealed, receiver).create(client)
    store = {"HEADWATER_STORE": settings.store} if settings.store else {}
    other = base64.b64encode(bytes(range(1, 33))).decode()
    for env, problem in [
        ({"HEADWATER_SECRET_KEY": other},
         f"sealed with another HEADWATER_SECRET_KEY (key {KEY.id}; this one is key {OTHER_KEY.id})"),
        ({}, f"sealed (key {KEY.id}) but HEADWATER_SECRET_KEY is not set"),
    ]:  # fmt: skip
        result = run_cli(
            "serve", "--port", str(free_port()), "--data-dir", str(settings.data_dir), env={**store, **env}, check=False
        )
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == f"headwater: webhook secrets are {problem}: start with the key they were sealed with\n"


def test_a_worker_without_the_key_sends_nothing_unsigned(settings: Settings, receiver: Receiver) -> None:
    sealed = hook_settings(settings, KEY)
    endpoints = Endpoints(sealed, receiver)
    with TestClient(create_app(sealed)) as client:
        endpoint = endpoints.create(client)
        response = client.post(
            f"/v1/webhooks/{endpoint['id']}/test", headers={"Authorization": f"Bearer {endpoints.key}"}
        )
        assert response.status_code == 202

    async def deliver() -> int:
        keyless = replace(sealed, secret_key=None)
        store = open_store(keyless)
        await store.start()
        worker = DeliveryWorker(store, keyless, jitter=0)
        try:
            return await worker.run_once()
        finally:
            await worker.stop()
            await store.close()

    assert asyncio.run(deliver()) == 0
    assert receiver.requests == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("correct-horse-battery-staple", id="not-base64"),
        pytest.param(base64.b64encode(bytes(16)).decode(), id="16-bytes"),
        pytest.param(base64.b64encode(bytes(33)).decode(), id="33-bytes"),
        pytest.param(KEY_TEXT[:-2], id="truncated"),
    ],
)
def test_a_malformed_key_is_one_line_at_start_that_does_not_show_it(tmp_path: Path, text: str) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path / "data"), env={"HEADWATER_SECRET_KEY": text}, check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "headwater: HEADWATER_SECRET_KEY (not shown) is not valid: expected 32 bytes in base64, e.g. the output of"
        " `openssl rand -base64 32`, or nothing\n"
    )
    assert text not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()


def test_keys_in_either_base64_alphabet_are_read_and_never_shown() -> None:
    raw = secrets.token_bytes(32)
    standard, urlsafe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert parse_secret_key(standard) == parse_secret_key(urlsafe) == parse_secret_key(urlsafe.rstrip("=") + "\n")
    key = parse_secret_key(standard)
    settings = replace(Settings(), secret_key=key)
    for shown in (repr(key), str(key), repr(settings)):
        assert standard not in shown and urlsafe not in shown and repr(raw) not in shown
    assert repr(key) == f"SecretKey(id={key.id})"


def test_a_sealed_secret_opens_only_for_its_endpoint_and_untouched() -> None:
    sealer = Sealer(KEY)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    sealed = sealer.seal("whe_1", secret)
    assert sealed.startswith(f"{SEALED_PREFIX}{KEY.id}.") and secret not in sealed
    assert sealer.seal("whe_1", secret) != sealed  # a fresh nonce each time
    assert sealer.open("whe_1", sealed) == secret
    assert sealer.open("whe_1", secret) == secret  # stored in clear before the key: itself
    for endpoint_id, text in (
        ("whe_2", sealed),  # copied into another endpoint's row
        ("whe_1", sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")),
        ("whe_1", sealed + "!"),
        ("whe_1", f"{SEALED_PREFIX}{KEY.id}."),
    ):
        with pytest.raises(SealError) as refused:
            sealer.open(endpoint_id, text)
        assert str(refused.value) == f"the sealed secret of webhook endpoint {endpoint_id} is damaged"
    assert Sealer(None).seal("whe_1", secret) == secret


# Secrets made by an older Headwater: one previous secret in columns of its own.

OLD_KEY = "INSERT INTO api_keys VALUES ('key_old', 'acme', 'viewer', 'live', 'hw_live_AAAA', NULL, 'h', 1, NULL)"
OLD_ENDPOINT = ("whe_old", "acme", "live", "https://hooks.example/x", "[]", "whsec_current", "whsec_previous")


def test_an_old_sqlite_endpoint_keeps_its_previous_secret(sqlite_settings: Settings) -> None:
    sqlite_settings.data_dir.mkdir(parents=True)
    conn = sqlite3.connect(sqlite_settings.data_dir / MAIN_FILE)
    expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1_000_000)
    conn.executescript(
        """
        CREATE TABLE api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL, mode TEXT NOT NULL,
            prefix TEXT NOT NULL, name TEXT, key_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
            revoked_at INTEGER);
        CREATE TABLE webhook_endpoints (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, mode TEXT NOT NULL,
            url TEXT NOT NULL, description TEXT, subscriptions TEXT NOT NULL, secret TEXT NOT NULL,
            previous_secret TEXT, previous_secret_expires_at INTEGER, enabled INTEGER NOT NULL,
            disabled_reason TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        """
    )
    conn.execute(
        "INSERT INTO webhook_endpoints VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, 1, NULL, 1, 1)", (*OLD_ENDPOINT, expires)
    )
    conn.execute(OLD_KEY)
    conn.commit()
    conn.close()
    _check_upgraded(sqlite_settings, expires)
    columns = [r[1] for r in sqlite3.connect(sqlite_settings.data_dir / MAIN_FILE).execute(
        "PRAGMA table_info(webhook_endpoints)")]  # fmt: skip
    assert "previous_secret" not in columns and "previous_secret_expires_at" not in columns


def test_an_old_postgres_endpoint_keeps_its_previous_secret(postgres: Postgres) -> None:
    """What only PostgreSQL has: a numbered migration (from the schema of version 1)."""
    database = postgres.new_database(empty=True)
    url = postgres.url(database)
    expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1_000_000)

    async def old_schema() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, MIGRATIONS[:1])
            await conn.execute("INSERT INTO tenants VALUES ('acme', 1)")
            await conn.execute(
                "INSERT INTO webhook_endpoints VALUES ($1, $2, $3, $4, NULL, '{}', $5, $6, $7, true, NULL, 1, 1)",
                *[v.encode() if i == 3 else v for i, v in enumerate(OLD_ENDPOINT) if i != 4],
                expires,
            )
            await conn.execute(OLD_KEY)
            await migrate(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(old_schema())
        _check_upgraded(replace(Settings(), store=url), expires)
    finally:
        postgres.drop_database(database)


def _check_upgraded(settings: Settings, expires_us: int) -> None:
    async def run() -> None:
        store = open_store(settings)
        await store.start()
        try:
            [endpoint] = (await store.registry.webhooks_by_id({"whe_old"})).values()
            assert (endpoint.secret, [(p.secret, p.expires_at) for p in endpoint.previous_secrets]) == (
                "whsec_current",
                [("whsec_previous", datetime.fromtimestamp(expires_us / 1_000_000, UTC))],
            )
            [key] = await store.registry.list_keys("acme")
            assert (key.publishable, key.allowed_origins) == (False, [])
        finally:
            await store.close()

    asyncio.run(run())
