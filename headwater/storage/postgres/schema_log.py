"""The log tables (see `schema`; how offsets are assigned is in `log`).

What a client wrote and gets back verbatim is `bytea`: an event's `data` (its bytes as sent),
its type, subject, source, channel and idempotency key, and a quarantined item's type and raw
text, which may hold a NUL character (`"\\u0000"` in JSON) that a PostgreSQL `text` cannot.
Ids, tenants and modes are made by the server and are `COLLATE "C"` (byte order, as SQLite
sorts). JSON the log encodes itself (violations, reasons, drafts) is `text`. Times are `bigint`
microseconds since the epoch, as the SQLite backend stores them, so that they read back exactly
as it returns them.
"""

from __future__ import annotations

LOG_DDL: list[str] = [
    """CREATE TABLE events (
        seq bigint PRIMARY KEY,
        id text COLLATE "C" NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        type bytea NOT NULL,
        subject bytea,
        source bytea,
        channel bytea,
        time bigint NOT NULL,
        received_at bigint NOT NULL,
        idempotency_key bytea,
        data bytea NOT NULL,
        violations text,
        partition integer NOT NULL
    )""",
    "CREATE UNIQUE INDEX events_id ON events (id)",
    # Dedup: appends look keys up (key first: see `log.FIND_ORIGINALS`) under the sequencer's
    # lock; the index makes a duplicate that slipped past that (a bug) an error, not an event.
    """CREATE UNIQUE INDEX events_dedup ON events (idempotency_key, tenant, mode)
        WHERE idempotency_key IS NOT NULL""",
    # The API's pages, newest time first (scanned backwards).
    "CREATE INDEX events_time ON events (tenant, mode, time, seq)",
    "CREATE INDEX events_type ON events (tenant, mode, type, time, seq)",
    "CREATE INDEX events_subject ON events (tenant, mode, subject, time, seq) WHERE subject IS NOT NULL",
    "CREATE INDEX events_source ON events (tenant, mode, source, time, seq) WHERE source IS NOT NULL",
    # A consumer's read of its partition in log order, its lag, and the partitions' heads.
    "CREATE INDEX events_partition ON events (partition, seq)",
    """CREATE TABLE quarantine (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        dialect text NOT NULL,
        type bytea,
        received_at bigint NOT NULL,
        reasons text NOT NULL,
        raw bytea,
        draft text,
        status text COLLATE "C" NOT NULL,
        replayed_event_id text,
        replayed_at bigint
    )""",
    "CREATE INDEX quarantine_scope ON quarantine (tenant, mode, status, id)",
]
