"""Helpers of the data protection tests: the stored rows themselves (what no read route shows
must be gone too), and a small world of definitions and events to erase from."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg

from headwater.config import Settings
from headwater.partitions import DEFAULT_PARTITIONS
from headwater.storage.sqlite import MAIN_FILE, partition_file
from tests.conftest import Api
from tests.processing import settle

Row = dict[str, Any]
MAIN_TABLES = ("events", "quarantine")
DERIVED_TABLES = (
    "trigger_windows",
    "actions",
    "enrollments",
    "profiles",
    "webhook_deliveries",
    "webhook_attempts",
    "dead_letters",
    "fact_effects",
    "challenge_progress",
    "challenge_values",
    "challenge_completions",
    "badge_awards",
    "points_ledger",
    "points_totals",
)


def _plain(value: Any) -> Any:
    return bytes(value).decode() if isinstance(value, bytes | memoryview) else value


def rows(settings: Settings, table: str) -> list[Row]:
    """Every row of the table: on SQLite from the main file or every partition's file, on
    PostgreSQL from the one database (bytea columns as text, as SQLite keeps them)."""
    if settings.store is not None:
        return asyncio.run(_postgres_rows(settings.store, table))
    files = (
        [settings.data_dir / MAIN_FILE]
        if table in MAIN_TABLES
        else [partition_file(settings.data_dir, p) for p in range(settings.partitions or DEFAULT_PARTITIONS)]
    )
    found: list[Row] = []
    for path in files:
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        try:
            found += [dict(row) for row in conn.execute(f"SELECT * FROM {table}")]
        finally:
            conn.close()
    return found


async def _postgres_rows(url: str, table: str) -> list[Row]:
    conn = await asyncpg.connect(url)
    try:
        return [{k: _plain(v) for k, v in dict(row).items()} for row in await conn.fetch(f"SELECT * FROM {table}")]
    finally:
        await conn.close()


def post(api: Api, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post(path, json=body, headers=api.as_(key))
    assert response.status_code == 201, response.text
    return dict(response.json())


def define(api: Api, key: str) -> dict[str, str]:
    """A challenge with a badge and points, triggers of every kind with state (a window, points,
    a journey, a profile attribute), a webhook endpoint for every event and action, and a strict
    schema that quarantines a bad `order`. Returns the challenge's id."""
    post(api, key, "/v1/badges", {"key": "gold", "name": "Gold"})
    challenge = post(
        api,
        key,
        "/v1/challenges",
        {
            "name": "two purchases",
            "fact_type": "custom.purchase",
            "metric": {"count": True},
            "target": 2,
            "reward": {"badge": "gold", "points": 10},
        },
    )
    post(
        api,
        key,
        "/v1/challenges",
        {"name": "skus", "fact_type": "custom.purchase", "metric": {"distinct": "data.sku"}, "target": 9},
    )
    for n, action in enumerate(
        [
            {"type": "award_points", "config": {"points": 2}},
            {"type": "journey_enroll", "config": {"journeyId": "vip"}},
            {"type": "update_attribute", "config": {"attribute": "last_sku", "value_from": "data.sku"}},
        ]
    ):
        rule: dict[str, Any] = {"name": f"t{n}", "event_types": ["purchase"], "action": action}
        if n == 0:
            rule["window"] = {"within": "30d", "count_at_least": 1}
        post(api, key, "/v1/triggers", rule)
    post(api, key, "/v1/webhooks", {"url": "https://hooks.example.com/in", "subscriptions": ["event.*", "action.*"]})
    schema = {"schema": {"type": "object", "required": ["amount"]}, "enforcement": "strict"}
    assert api.client.put("/v1/schemas/order", json=schema, headers=api.as_(key)).status_code == 201
    return {"challenge": challenge["id"]}


def purchases(subject: str, times: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "type": "purchase",
            "subject": subject,
            "time": t,
            "data": {"sku": f"s{n}"},
            "idempotency_key": f"{subject}-{n}",
        }
        for n, t in enumerate(times)
    ]


def ingest(api: Api, key: str, events: list[dict[str, Any]], tenant: str = "acme") -> list[dict[str, Any]]:
    response = api.client.post("/v1/events", json={"events": events}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    settle(api, key, tenant)
    return list(response.json()["results"])


def get(api: Api, key: str, path: str, **params: Any) -> Any:
    response = api.client.get(path, params=params, headers=api.as_(key))
    return response.status_code, response.json()
