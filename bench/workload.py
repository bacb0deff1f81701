"""The request bodies and the SQLite table every benchmark phase shares.

Keeping them in one place means the FastAPI comparison, the in-process ceiling and the
load sent to Headwater all write the same events into the same shape of table.
"""

from __future__ import annotations

import json
import sqlite3

BATCH_SIZE = 1000
# Distinct subjects in a batch. Each one dirties its own leaf of the subject index, so this
# moves the durable ceiling a lot (here: 1 -> ~190k events/s, 100 -> ~130k, 1000 -> ~50k).
BATCH_SUBJECTS = 100


def event(i: int = 42) -> dict[str, object]:
    """One native event, as a client would send it."""
    return {
        "type": "page_view",
        "subject": f"user_{i}",
        "channel": "web",
        "data": {"path": "/home", "ms": 123},
    }


def single_body() -> bytes:
    return json.dumps(event(), separators=(",", ":")).encode()


def batch_body(size: int = BATCH_SIZE, subjects: int = BATCH_SUBJECTS) -> bytes:
    events = [event(i % subjects) for i in range(size)]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


# A stand-in for the event log: the columns of the canonical event and the indexes the
# design names (time, type and subject lookups per tenant and mode, dedup on the key).
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    source TEXT,
    channel TEXT,
    time INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    idempotency_key TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (tenant, mode, time, seq);
CREATE INDEX IF NOT EXISTS events_type ON events (tenant, mode, type, time, seq);
CREATE INDEX IF NOT EXISTS events_subject ON events (tenant, mode, subject, time, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_idempotency
    ON events (tenant, mode, idempotency_key) WHERE idempotency_key IS NOT NULL;
"""

INSERT = """
INSERT INTO events (id, tenant, mode, type, subject, source, channel, time, received_at,
                    idempotency_key, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def open_durable(path: str) -> sqlite3.Connection:
    """A connection with the durability Headwater promises: WAL and synchronous=FULL."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn
