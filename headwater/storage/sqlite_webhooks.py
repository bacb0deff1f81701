"""Webhook endpoints, the durable delivery outbox and every delivery attempt, on SQLite.

The trigger engine puts messages in the outbox with `enqueue_deliveries`, inside the
same write as the action that caused them; the delivery worker claims due rows, sends
them and records each attempt. A delivery's id derives from (endpoint, message key), so
a message enqueued twice is sent once, and the id is the `webhook-id` on every attempt.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime, timedelta
from typing import Any

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.derived import (
    AttemptOutcome,
    Delivery,
    DeliveryAttempt,
    DeliveryQuery,
    DueDelivery,
    WebhookEndpoint,
    topic_matches,
)
from headwater.storage.sqlite_core import SqliteCore, Transaction, where

WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    subscriptions TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_expires_at INTEGER,
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_scope ON webhook_endpoints (tenant, mode, created_at);

-- The outbox. `round_start` is `attempts` when the delivery was last (re-)queued, so
-- `attempts - round_start` indexes the retry schedule.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    round_start INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_status INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_scope ON webhook_deliveries (tenant, mode, position);
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, status);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    position INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms REAL NOT NULL,
    error TEXT,
    UNIQUE (delivery_id, attempt)
);
CREATE INDEX IF NOT EXISTS webhook_attempts_endpoint ON webhook_attempts (endpoint_id, position);
"""

ENDPOINT_COLUMNS = (
    "id, tenant, mode, url, description, subscriptions, secret, previous_secret, previous_secret_expires_at,"
    " enabled, disabled_reason, created_at, updated_at"
)
DELIVERY_COLUMNS = (
    "id, tenant, mode, endpoint_id, topic, message_key, payload, status, attempts, next_attempt_at,"
    " last_status, last_error, created_at, delivered_at"
)
ATTEMPT_COLUMNS = "delivery_id, endpoint_id, attempt, at, status_code, latency_ms, error"
_subscriptions = msgspec.json.Decoder(list[str])
_encode = msgspec.json.encode


def delivery_id(endpoint_id: str, message_key: str) -> str:
    """The stable `webhook-id` of a message for an endpoint."""
    digest = hashlib.sha256(f"{endpoint_id}\x00{message_key}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def _opt_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _row_to_endpoint(row: tuple[Any, ...]) -> WebhookEndpoint:
    (id_, tenant, mode, url, description, subscriptions, secret, previous, previous_expires, enabled, reason,
     created, updated) = row  # fmt: skip
    return WebhookEndpoint(
        id=id_,
        tenant=tenant,
        mode=mode,
        url=url,
        description=description,
        subscriptions=_subscriptions.decode(subscriptions),
        secret=secret,
        previous_secret=previous,
        previous_secret_expires_at=_opt_us(previous_expires),
        enabled=bool(enabled),
        disabled_reason=reason,
        created_at=from_us(created),
        updated_at=from_us(updated),
    )


def _row_to_delivery(row: tuple[Any, ...]) -> Delivery:
    (id_, tenant, mode, endpoint_id, topic, message_key, payload, status, attempts, next_at, last_status,
     last_error, created, delivered) = row  # fmt: skip
    return Delivery(
        id=id_,
        tenant=tenant,
        mode=mode,
        endpoint_id=endpoint_id,
        topic=topic,
        message_key=message_key,
        payload=msgspec.Raw(payload.encode()),
        status=status,
        attempts=attempts,
        next_attempt_at=_opt_us(next_at) if status == "pending" else None,
        last_status=last_status,
        last_error=last_error,
        created_at=from_us(created),
        delivered_at=_opt_us(delivered),
    )


def _row_to_attempt(row: tuple[Any, ...]) -> DeliveryAttempt:
    delivery, endpoint_id, attempt, at, status_code, latency_ms, error = row
    return DeliveryAttempt(delivery, endpoint_id, attempt, from_us(at), status_code, latency_ms, error)


def enqueue_deliveries(
    conn: sqlite3.Connection,
    tenant: str,
    mode: Mode,
    topic: str,
    message_key: str,
    payload: bytes,
    at: datetime,
    endpoint_id: str | None = None,
) -> list[str]:
    """Put a message in the outbox for every enabled endpoint of the tenant and mode subscribed
    to `topic` (or for `endpoint_id` alone, whatever it subscribes to); see
    `ProcessingState.enqueue_deliveries`. Runs on the writer's connection, inside its transaction."""
    if endpoint_id is not None:
        row = conn.execute(
            "SELECT id FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ? AND enabled = 1",
            (endpoint_id, tenant, mode),
        ).fetchone()
        if row is None:
            raise LookupError(f"no enabled webhook endpoint {endpoint_id}")
        targets = [endpoint_id]
    else:
        targets = [
            id_
            for id_, subscriptions in conn.execute(
                "SELECT id, subscriptions FROM webhook_endpoints WHERE tenant = ? AND mode = ? AND enabled = 1"
                " ORDER BY created_at, id",
                (tenant, mode),
            )
            if any(topic_matches(s, topic) for s in _subscriptions.decode(subscriptions))
        ]
    body = payload.decode()
    at_us = to_us(at)
    ids = [delivery_id(target, message_key) for target in targets]
    conn.executemany(
        "INSERT OR IGNORE INTO webhook_deliveries (id, tenant, mode, endpoint_id, topic, message_key, payload,"
        " status, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        [
            (id_, tenant, mode, target, topic, message_key, body, at_us, at_us)
            for id_, target in zip(ids, targets, strict=True)
        ],
    )
    return ids


def _fail_pending(conn: sqlite3.Connection, endpoint_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = ?, next_attempt_at = NULL"
        " WHERE endpoint_id = ? AND status = 'pending'",
        (f"endpoint disabled: {reason}", endpoint_id),
    )


class WebhookTables(SqliteCore):
    SCHEMA = WEBHOOK_SCHEMA

    # Endpoints

    async def create_webhook(self, endpoint: WebhookEndpoint) -> None:
        row = (
            endpoint.id,
            endpoint.tenant,
            endpoint.mode,
            endpoint.url,
            endpoint.description,
            _encode(endpoint.subscriptions).decode(),
            endpoint.secret,
            endpoint.previous_secret,
            None if endpoint.previous_secret_expires_at is None else to_us(endpoint.previous_secret_expires_at),
            int(endpoint.enabled),
            endpoint.disabled_reason,
            to_us(endpoint.created_at),
            to_us(endpoint.updated_at),
        )
        await self.write(
            lambda tx: tx.conn.execute(
                f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ({','.join('?' * 13)})", row
            )
        )

    async def get_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> WebhookEndpoint | None:
        sql = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ?"

        def run(conn: sqlite3.Connection) -> WebhookEndpoint | None:
            row = conn.execute(sql, (endpoint_id, tenant, mode)).fetchone()
            return None if row is None else _row_to_endpoint(row)

        return await self.read(run)

    async def webhook_subscriptions(self, tenant: str, mode: Mode) -> set[str]:
        sql = (
            "SELECT DISTINCT j.value FROM webhook_endpoints e, json_each(e.subscriptions) j"
            " WHERE e.tenant = ? AND e.mode = ? AND e.enabled = 1"
        )
        return await self.read(lambda conn: {row[0] for row in conn.execute(sql, (tenant, mode))})

    async def list_webhooks(self, tenant: str, mode: Mode) -> list[WebhookEndpoint]:
        sql = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = ? AND mode = ? ORDER BY created_at, id"
        return await self.read(lambda conn: [_row_to_endpoint(r) for r in conn.execute(sql, (tenant, mode))])

    async def update_webhook(self, endpoint: WebhookEndpoint) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
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
            if cur.rowcount and not endpoint.enabled:
                _fail_pending(tx.conn, endpoint.id, endpoint.disabled_reason or "disabled")
            return cur.rowcount == 1

        return await self.write(run)

    async def rotate_webhook_secret(
        self, tenant: str, mode: Mode, endpoint_id: str, secret: str, previous_expires_at: datetime, at: datetime
    ) -> WebhookEndpoint | None:
        def run(tx: Transaction) -> WebhookEndpoint | None:
            row = tx.conn.execute(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = ?, secret = ?,"
                f" updated_at = ? WHERE id = ? AND tenant = ? AND mode = ? RETURNING {ENDPOINT_COLUMNS}",
                (to_us(previous_expires_at), secret, to_us(at), endpoint_id, tenant, mode),
            ).fetchone()
            return None if row is None else _row_to_endpoint(row)

        return await self.write(run)

    async def delete_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                "DELETE FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ?", (endpoint_id, tenant, mode)
            )
            if cur.rowcount:
                tx.conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
                tx.conn.execute("DELETE FROM webhook_attempts WHERE endpoint_id = ?", (endpoint_id,))
            return cur.rowcount == 1

        return await self.write(run)

    # The outbox

    async def enqueue_webhook(
        self,
        tenant: str,
        mode: Mode,
        topic: str,
        message_key: str,
        payload: bytes,
        at: datetime,
        endpoint_id: str | None = None,
    ) -> list[str]:
        return await self.write(
            lambda tx: enqueue_deliveries(tx.conn, tenant, mode, topic, message_key, payload, at, endpoint_id)
        )

    async def get_delivery(self, tenant: str, mode: Mode, delivery_id: str) -> Delivery | None:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ? AND tenant = ? AND mode = ?"

        def run(conn: sqlite3.Connection) -> Delivery | None:
            row = conn.execute(sql, (delivery_id, tenant, mode)).fetchone()
            return None if row is None else _row_to_delivery(row)

        return await self.read(run)

    async def list_deliveries(self, query: DeliveryQuery) -> list[tuple[int, Delivery]]:
        clause, args = where(
            ("tenant = ?", query.tenant),
            ("mode = ?", query.mode),
            ("status = ?", query.status),
            ("endpoint_id = ?", query.endpoint_id),
            ("position < ?", query.before),
        )
        args.append(query.limit)
        sql = (
            f"SELECT position, {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {clause} ORDER BY position DESC LIMIT ?"
        )
        return await self.read(lambda conn: [(r[0], _row_to_delivery(r[1:])) for r in conn.execute(sql, args)])

    async def retry_delivery(self, tenant: str, mode: Mode, delivery_id: str, at: datetime) -> Delivery | None:
        def run(tx: Transaction) -> Delivery | None:
            row = tx.conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', round_start = attempts, next_attempt_at = ?"
                " WHERE id = ? AND tenant = ? AND mode = ? AND status = 'failed' AND endpoint_id IN"
                " (SELECT id FROM webhook_endpoints WHERE enabled = 1)"
                f" RETURNING {DELIVERY_COLUMNS}",
                (to_us(at), delivery_id, tenant, mode),
            ).fetchone()
            return None if row is None else _row_to_delivery(row)

        return await self.write(run)

    async def list_webhook_attempts(
        self, tenant: str, mode: Mode, endpoint_id: str, before: int | None = None, limit: int = 100
    ) -> list[tuple[int, DeliveryAttempt]]:
        sql = (
            f"SELECT position, {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE endpoint_id = ? AND position < ?"
            " AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ? AND tenant = ? AND mode = ?)"
            " ORDER BY position DESC LIMIT ?"
        )
        args = (endpoint_id, 2**63 - 1 if before is None else before, endpoint_id, tenant, mode, limit)
        return await self.read(lambda conn: [(r[0], _row_to_attempt(r[1:])) for r in conn.execute(sql, args)])

    # The delivery worker

    async def claim_deliveries(
        self, now: datetime, limit: int, lease_until: datetime, first_delay: float = 0.0
    ) -> list[DueDelivery]:
        now_us = to_us(now)
        first_due_us = to_us(now - timedelta(seconds=first_delay))
        sql = (
            "SELECT d.id, d.tenant, d.mode, d.endpoint_id, d.topic, d.payload, d.attempts, d.attempts - d.round_start,"
            " e.url, e.secret, e.previous_secret, e.previous_secret_expires_at"
            " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND e.enabled = 1"
            " AND (d.attempts > d.round_start OR d.next_attempt_at <= ?)"
            " ORDER BY d.next_attempt_at, d.position LIMIT ?"
        )

        def due(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? LIMIT 1", (now_us,)
            ).fetchone()
            return row is not None

        def run(tx: Transaction) -> list[DueDelivery]:
            rows = tx.conn.execute(sql, (now_us, first_due_us, limit)).fetchall()
            tx.conn.executemany(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                [(to_us(lease_until), r[0]) for r in rows],
            )
            return [
                DueDelivery(
                    id=r[0],
                    tenant=r[1],
                    mode=r[2],
                    endpoint_id=r[3],
                    topic=r[4],
                    payload=r[5].encode(),
                    attempts=r[6],
                    round_attempts=r[7],
                    url=r[8],
                    secret=r[9],
                    previous_secret=r[10],
                    previous_secret_expires_at=_opt_us(r[11]),
                )
                for r in rows
            ]

        # Polling costs a read; only a claim that will find something takes the writer.
        if not await self.read(due):
            return []
        return await self.write(run)

    async def finish_attempt(self, outcome: AttemptOutcome) -> None:
        attempt = outcome.attempt
        at_us = to_us(attempt.at)

        def run(tx: Transaction) -> None:
            # Normally the delivery is pending. It may have failed meanwhile (its endpoint was
            # disabled) or been delivered (by a worker that took over an expired claim): the
            # attempt is recorded all the same, and only a success changes a settled status.
            settle = "status = 'pending' OR ? = 'delivered'"
            cur = tx.conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, last_error = ?,"
                f" status = CASE WHEN {settle} THEN ? ELSE status END,"
                f" next_attempt_at = CASE WHEN {settle} THEN ? ELSE next_attempt_at END,"
                f" delivered_at = CASE WHEN {settle} THEN ? ELSE delivered_at END"
                " WHERE id = ?",
                (
                    attempt.status_code,
                    attempt.error,
                    outcome.status,
                    outcome.status,
                    outcome.status,
                    None if outcome.next_attempt_at is None else to_us(outcome.next_attempt_at),
                    outcome.status,
                    at_us if outcome.status == "delivered" else None,
                    attempt.delivery_id,
                ),
            )
            if not cur.rowcount:
                return  # deleted (with its endpoint) while it was being sent
            tx.conn.execute(
                f"INSERT OR IGNORE INTO webhook_attempts ({ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.delivery_id,
                    attempt.endpoint_id,
                    attempt.attempt,
                    at_us,
                    attempt.status_code,
                    attempt.latency_ms,
                    attempt.error,
                ),
            )
            if outcome.disable_endpoint is not None:
                cur = tx.conn.execute(
                    "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?"
                    " WHERE id = ? AND enabled = 1",
                    (outcome.disable_endpoint, at_us, attempt.endpoint_id),
                )
                if cur.rowcount:
                    _fail_pending(tx.conn, attempt.endpoint_id, outcome.disable_endpoint)

        await self.write(run)
