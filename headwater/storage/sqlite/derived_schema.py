"""The derived state's tables, and the one function that writes a batch's effects.

Derived state lives apart from the log, in a file per partition (`PARTITION_SCHEMA`) and one
file they share (`SHARED_SCHEMA`: leases, workers, the catalog):
- SQLite lets one writer at a time into a file, and a consumer's transaction must never hold
  up a group commit of ingest;
- a partition's file is written by the one worker that holds its lease, so workers never wait
  for each other's writes, and (more costly still) never make each other's page cache stale:
  SQLite drops a connection's whole cache when another connection wrote the file since.
Everything here is written with `synchronous=NORMAL`: it can be rebuilt from the log, and a
commit that a power cut takes back (a process crash takes nothing) is only applied again,
with the same ids, from the checkpoint it left.

Rows that lists merge across partitions (actions, deliveries, attempts, dead letters) are
ordered by time, then partition, then row: see `records.Position`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import msgspec

from headwater.clock import to_us
from headwater.storage.effects import Effects

LEASES_AND_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL,
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition)
) WITHOUT ROWID;
"""

PARTITION_SCHEMA = f"""
-- How far each consumer has applied the partition, who holds it (so that a batch's write
-- checks the lease in its own transaction), and the events no consumer could apply.
{LEASES_AND_CHECKPOINTS}

CREATE TABLE IF NOT EXISTS dead_letters (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    consumer TEXT NOT NULL,
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_scope ON dead_letters (tenant, mode, created_at, position);
CREATE INDEX IF NOT EXISTS dead_letters_retrying ON dead_letters (seq) WHERE status = 'retrying';

-- Triggers: rolling windows, action records, journey enrolments, subject profiles.
CREATE TABLE IF NOT EXISTS trigger_windows (
    trigger_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_id TEXT NOT NULL,
    time INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (trigger_id, subject, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trigger_windows_time ON trigger_windows (trigger_id, subject, time);

CREATE TABLE IF NOT EXISTS actions (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    trigger_id TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject TEXT,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    event_time INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS actions_scope ON actions (tenant, mode, created_at, position);
CREATE INDEX IF NOT EXISTS actions_trigger ON actions (trigger_id, created_at, position);
CREATE INDEX IF NOT EXISTS actions_event ON actions (event_id);
CREATE INDEX IF NOT EXISTS actions_firing ON actions (trigger_id, subject, event_time);

CREATE TABLE IF NOT EXISTS enrollments (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    journey_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    action_id TEXT NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS enrollments_journey ON enrollments (tenant, mode, journey_id, subject, status);

CREATE TABLE IF NOT EXISTS profiles (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    subject TEXT NOT NULL,
    attributes TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, subject)
);

-- The webhook outbox. `round_start` is `attempts` when the delivery was last (re-)queued, so
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
CREATE INDEX IF NOT EXISTS webhook_deliveries_scope ON webhook_deliveries (tenant, mode, created_at, position);
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, status);
-- The messages of an event or an action, which go when an erasure takes it.
CREATE INDEX IF NOT EXISTS webhook_deliveries_message ON webhook_deliveries (message_key);

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
CREATE INDEX IF NOT EXISTS webhook_attempts_endpoint ON webhook_attempts (endpoint_id, at, position);

-- Gamification. A small number per challenge is the progress tables' key: a challenge id is
-- 36 characters and in every progress row, and the rows (and the consumer's writes, a random
-- page per new row) are half the size with a number. Never deleted, so never reused.
CREATE TABLE IF NOT EXISTS challenge_keys (
    num INTEGER PRIMARY KEY,
    challenge_id TEXT NOT NULL UNIQUE
);

-- Progress and distinct values are keyed by challenge first, with no secondary index: a
-- participant's row is one primary-key look-up, and a challenge's leaderboard one range of
-- the primary key. `seq` is the log offset of the last fact counted in a row, so a fact
-- applied again (a checkpoint that went back) counts nothing. There is no table of facts: a
-- fact is a pure function of its event, read from the log.
CREATE TABLE IF NOT EXISTS fact_effects (
    fact_id TEXT PRIMARY KEY,
    effects TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS challenge_progress (
    challenge INTEGER NOT NULL,  -- challenge_keys.num
    participant_id TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    value REAL NOT NULL,
    reached_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (challenge, participant_id, bucket)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS challenge_values (
    challenge INTEGER NOT NULL,  -- challenge_keys.num
    participant_id TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    value TEXT NOT NULL,
    reached_at INTEGER NOT NULL,
    PRIMARY KEY (challenge, participant_id, bucket, value)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS challenge_completions (
    challenge_id TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    occurrence TEXT NOT NULL,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    period INTEGER NOT NULL,
    completed_at INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (challenge_id, participant_id, occurrence)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS challenge_completions_period ON challenge_completions (challenge_id, participant_id, period);

CREATE TABLE IF NOT EXISTS badge_awards (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    badge TEXT NOT NULL,
    awarded_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, mode, participant_id, badge)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS points_ledger (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    reason TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_ledger_participant ON points_ledger (tenant, mode, participant_id, at);

CREATE TABLE IF NOT EXISTS points_totals (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    period TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    participant_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    reached_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, period, bucket, participant_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_totals_board ON points_totals
    (tenant, mode, period, bucket, points DESC, reached_at, participant_id);

"""

SHARED_SCHEMA = f"""
-- Which workers are alive, who holds the catalog, and how far the catalog consumer has folded
-- the whole log (partition -1).
{LEASES_AND_CHECKPOINTS}
CREATE TABLE IF NOT EXISTS workers (
    owner TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The event catalog, folded from the log by the catalog consumer.
CREATE TABLE IF NOT EXISTS catalog (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    violations INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, type)
);
CREATE TABLE IF NOT EXISTS catalog_properties (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    json_type TEXT NOT NULL,
    PRIMARY KEY (tenant, mode, type, name, json_type)
) WITHOUT ROWID;
"""

# What `headwater replay` rebuilds from the log (the outbox, the catalog, dead letters and
# positions are kept).
REBUILT_TABLES = (
    "trigger_windows",
    "actions",
    "enrollments",
    "profiles",
    "fact_effects",
    "challenge_progress",
    "challenge_values",
    "challenge_completions",
    "badge_awards",
    "points_ledger",
    "points_totals",
)

ACTION_COLUMNS = (
    "id, tenant, mode, trigger_id, trigger_name, event_id, event_type, subject, type, config, status,"
    " priority, event_time, created_at, error, result"
)
COMPLETION_COLUMNS = "tenant, mode, challenge_id, participant_id, occurrence, period, completed_at, event_id"
ADD_POINTS_TOTAL = (
    "INSERT INTO points_totals VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
    " points = points + excluded.points, reached_at = max(reached_at, excluded.reached_at)"
)
UPSERT_CATALOG = """
INSERT INTO catalog (tenant, mode, type, count, first_seen, last_seen, violations) VALUES (?,?,?,?,?,?,?)
ON CONFLICT (tenant, mode, type) DO UPDATE SET
    count = count + excluded.count,
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    violations = violations + excluded.violations
"""
_encode = msgspec.json.encode


def challenge_nums(conn: sqlite3.Connection, challenge_ids: Iterable[str], create: bool) -> dict[str, int]:
    """The progress tables' number of each challenge id (made for ids that have none, if `create`)."""
    wanted = sorted(set(challenge_ids))
    if not wanted:
        return {}
    nums: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        sql = f"SELECT challenge_id, num FROM challenge_keys WHERE challenge_id IN ({','.join('?' * len(chunk))})"
        nums.update(conn.execute(sql, chunk).fetchall())
        missing = [(c,) for c in chunk if c not in nums]
        if missing and create:
            conn.executemany("INSERT OR IGNORE INTO challenge_keys (challenge_id) VALUES (?)", missing)
            nums.update(conn.execute(sql, chunk).fetchall())
    return nums


def write_effects(conn: sqlite3.Connection, e: Effects) -> None:
    """Write a batch's effects on the writer's connection, inside its transaction."""
    if e.window_points:
        conn.executemany("INSERT OR IGNORE INTO trigger_windows VALUES (?, ?, ?, ?, ?)", e.window_points)
    if e.window_deletes:
        conn.executemany(
            "DELETE FROM trigger_windows WHERE trigger_id = ? AND subject = ? AND event_id = ?", e.window_deletes
        )
    if e.actions:
        conn.executemany(
            f"INSERT OR IGNORE INTO actions ({ACTION_COLUMNS}) VALUES ({','.join('?' * 16)})",
            [
                (
                    a.id,
                    a.tenant,
                    a.mode,
                    a.trigger_id,
                    a.trigger_name,
                    a.event_id,
                    a.event_type,
                    a.subject,
                    a.type,
                    bytes(a.config).decode(),
                    a.status,
                    a.priority,
                    to_us(a.event_time),
                    to_us(a.created_at),
                    a.error,
                    None if a.result is None else bytes(a.result).decode(),
                )
                for a in e.actions
            ],
        )
    if e.enrollments:
        conn.executemany(
            "INSERT OR IGNORE INTO enrollments VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
            [
                (n.id, n.tenant, n.mode, n.journey_id, n.subject, n.action_id, to_us(n.enrolled_at))
                for n in e.enrollments
            ],
        )
    if e.ended_enrollments:  # after the new ones: a batch may end an enrolment it made
        conn.executemany(
            "UPDATE enrollments SET status = 'restarted' WHERE id = ?", [(id_,) for id_ in e.ended_enrollments]
        )
    if e.profiles:
        conn.executemany(
            "INSERT INTO profiles VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, mode, subject) DO UPDATE SET"
            " attributes = excluded.attributes, updated_at = excluded.updated_at",
            [(p.tenant, p.mode, p.subject, _encode(p.attributes).decode(), to_us(p.updated_at)) for p in e.profiles],
        )
    if e.deliveries:
        write_deliveries(conn, e.deliveries)
    _write_gamification(conn, e)
    if e.catalog:
        conn.executemany(UPSERT_CATALOG, e.catalog)
    if e.properties:
        conn.executemany("INSERT OR IGNORE INTO catalog_properties VALUES (?,?,?,?,?)", e.properties)


def write_deliveries(conn: sqlite3.Connection, deliveries: Iterable[Any]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO webhook_deliveries (id, tenant, mode, endpoint_id, topic, message_key, payload,"
        " status, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        [
            (
                d.id,
                d.tenant,
                d.mode,
                d.endpoint_id,
                d.topic,
                d.message_key,
                d.payload.decode(),
                to_us(d.at),
                to_us(d.at),
            )
            for d in deliveries
        ],
    )


def _write_gamification(conn: sqlite3.Connection, e: Effects) -> None:
    if e.progress or e.values:
        nums = challenge_nums(conn, {r[0] for r in e.progress} | {r[0] for r in e.values}, create=True)
        if e.progress:
            conn.executemany(
                "INSERT INTO challenge_progress VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " value = excluded.value, reached_at = excluded.reached_at, seq = excluded.seq",
                [(nums[c], p, b, v, r, seq) for c, p, b, v, r, seq in e.progress],
            )
        if e.values:
            conn.executemany(
                "INSERT OR IGNORE INTO challenge_values VALUES (?, ?, ?, ?, ?)",
                [(nums[c], p, b, v, r) for c, p, b, v, r in e.values],
            )
    if e.completions:
        conn.executemany(
            f"INSERT OR IGNORE INTO challenge_completions ({COMPLETION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    c.tenant,
                    c.mode,
                    c.challenge_id,
                    c.participant_id,
                    c.occurrence,
                    c.period,
                    to_us(c.completed_at),
                    c.event_id,
                )
                for c in e.completions
            ],
        )
    if e.badges:
        conn.executemany(
            "INSERT OR IGNORE INTO badge_awards VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (a.tenant, a.mode, a.participant_id, a.badge, to_us(a.awarded_at), a.reason, a.event_id)
                for a in e.badges
            ],
        )
    for entry in e.points:
        at = to_us(entry.at)
        cur = conn.execute(
            "INSERT OR IGNORE INTO points_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.id, entry.tenant, entry.mode, entry.participant_id, entry.points, entry.reason, entry.event_id, at),
        )
        # Totals only for a ledger line this write made: a repeated cause adds nothing.
        if cur.rowcount == 1:
            conn.executemany(
                ADD_POINTS_TOTAL,
                [(entry.tenant, entry.mode, p, b, entry.participant_id, entry.points, at) for p, b in entry.buckets],
            )
    if e.fact_effects:
        conn.executemany(
            "INSERT OR REPLACE INTO fact_effects VALUES (?, ?)", [(f, raw.decode()) for f, raw in e.fact_effects]
        )
