"""The derived tables (see `schema`): the SQLite backend's partition files and shared file, as
one set of tables that every partition shares.

Where SQLite has a file per partition, a row here says its partition when something reads by
partition (checkpoints, dead letters, the outbox a sender claims) or orders by it (the lists
that span partitions: actions, deliveries, attempts, dead letters and enrolments are ordered
by time, then partition, then `position`, see `records.Position`). Rows keyed by subject need
no partition: a subject lives in one partition.

Times are µs since the epoch (`bigint`), as `records.Position` counts them. JSON is `text`,
stored as the engines encoded it, so reads give it back byte for byte. `position` is a
`bigserial`: the rebuild's copies of a table (`rebuild`) take their default from the same
sequence, so rows swapped in keep their positions and never collide with later ones.
"""

from __future__ import annotations

DERIVED_DDL: list[str] = [
    # Positions and leases. A lease is a row (name, owner, expires µs): `partition:<n>` for a
    # partition, `catalog` for the whole log; a batch's write checks it in its transaction.
    """CREATE TABLE leases (
        name text COLLATE "C" PRIMARY KEY,
        owner text COLLATE "C" NOT NULL,
        expires_at bigint NOT NULL
    )""",
    # `partition` -1 (`WHOLE_LOG`) is the catalog consumer's.
    """CREATE TABLE checkpoints (
        consumer text COLLATE "C" NOT NULL,
        partition integer NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (consumer, partition)
    )""",
    """CREATE TABLE workers (
        owner text COLLATE "C" PRIMARY KEY,
        expires_at bigint NOT NULL
    )""",
    # Dead letters: the events no consumer could apply.
    """CREATE TABLE dead_letters (
        position bigserial PRIMARY KEY,
        id text COLLATE "C" NOT NULL UNIQUE,
        consumer text COLLATE "C" NOT NULL,
        partition integer NOT NULL,
        seq bigint NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        event_type text COLLATE "C" NOT NULL,
        error text COLLATE "C" NOT NULL,
        attempts integer NOT NULL,
        status text COLLATE "C" NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    )""",
    "CREATE INDEX dead_letters_scope ON dead_letters (tenant, mode, created_at, partition, position)",
    "CREATE INDEX dead_letters_retrying ON dead_letters (partition, seq) WHERE status = 'retrying'",
    # Triggers: rolling windows, action records, journey enrolments, subject profiles.
    """CREATE TABLE trigger_windows (
        trigger_id text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        time bigint NOT NULL,
        value double precision NOT NULL,
        PRIMARY KEY (trigger_id, subject, event_id)
    )""",
    "CREATE INDEX trigger_windows_time ON trigger_windows (trigger_id, subject, time)",
    """CREATE TABLE actions (
        position bigserial PRIMARY KEY,
        partition integer NOT NULL,
        id text COLLATE "C" NOT NULL UNIQUE,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        trigger_id text COLLATE "C" NOT NULL,
        trigger_name text COLLATE "C" NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        event_type text COLLATE "C" NOT NULL,
        subject text COLLATE "C",
        type text COLLATE "C" NOT NULL,
        config text COLLATE "C" NOT NULL,
        status text COLLATE "C" NOT NULL,
        priority integer NOT NULL,
        event_time bigint NOT NULL,
        created_at bigint NOT NULL,
        error text COLLATE "C",
        result text COLLATE "C"
    )""",
    "CREATE INDEX actions_scope ON actions (tenant, mode, created_at, partition, position)",
    "CREATE INDEX actions_trigger ON actions (trigger_id, created_at, partition, position)",
    "CREATE INDEX actions_event ON actions (event_id)",
    "CREATE INDEX actions_firing ON actions (trigger_id, subject, event_time)",
    # `position` orders enrolments made at the same time (SQLite's rowid).
    """CREATE TABLE enrollments (
        id text COLLATE "C" PRIMARY KEY,
        position bigserial NOT NULL UNIQUE,
        partition integer NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        journey_id text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        status text COLLATE "C" NOT NULL,
        action_id text COLLATE "C" NOT NULL UNIQUE,
        enrolled_at bigint NOT NULL
    )""",
    "CREATE INDEX enrollments_journey ON enrollments (tenant, mode, journey_id, subject, status)",
    """CREATE TABLE profiles (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        attributes text COLLATE "C" NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode, subject)
    )""",
    # The webhook outbox, in the partition of (tenant, mode, endpoint) or of the batch that
    # queued it. `round_start` is `attempts` when the delivery was last (re-)queued, so
    # `attempts - round_start` indexes the retry schedule.
    """CREATE TABLE webhook_deliveries (
        position bigserial PRIMARY KEY,
        partition integer NOT NULL,
        id text COLLATE "C" NOT NULL UNIQUE,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        endpoint_id text COLLATE "C" NOT NULL,
        topic text COLLATE "C" NOT NULL,
        message_key text COLLATE "C" NOT NULL,
        payload text COLLATE "C" NOT NULL,
        status text COLLATE "C" NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        round_start integer NOT NULL DEFAULT 0,
        next_attempt_at bigint,
        last_status integer,
        last_error text COLLATE "C",
        created_at bigint NOT NULL,
        delivered_at bigint
    )""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (partition, next_attempt_at) WHERE status = 'pending'",
    "CREATE INDEX webhook_deliveries_scope ON webhook_deliveries (tenant, mode, created_at, partition, position)",
    "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, status)",
    """CREATE TABLE webhook_attempts (
        position bigserial PRIMARY KEY,
        partition integer NOT NULL,
        delivery_id text COLLATE "C" NOT NULL,
        endpoint_id text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        at bigint NOT NULL,
        status_code integer,
        latency_ms double precision NOT NULL,
        error text COLLATE "C",
        UNIQUE (delivery_id, attempt)
    )""",
    "CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, at, partition, position)",
    # Gamification. `seq` is the log offset of the last fact counted in a progress row, so a
    # fact applied again (a checkpoint that went back) counts nothing. There is no table of
    # facts: a fact is a pure function of its event, read from the log.
    """CREATE TABLE fact_effects (
        fact_id text COLLATE "C" PRIMARY KEY,
        effects text COLLATE "C" NOT NULL
    )""",
    """CREATE TABLE challenge_progress (
        challenge_id text COLLATE "C" NOT NULL,
        participant_id text COLLATE "C" NOT NULL,
        bucket bigint NOT NULL,
        value double precision NOT NULL,
        reached_at bigint NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (challenge_id, participant_id, bucket)
    )""",
    # A participant's challenges (`participant`), without a scan of every challenge.
    "CREATE INDEX challenge_progress_participant ON challenge_progress (participant_id, challenge_id)",
    """CREATE TABLE challenge_values (
        challenge_id text COLLATE "C" NOT NULL,
        participant_id text COLLATE "C" NOT NULL,
        bucket bigint NOT NULL,
        value text COLLATE "C" NOT NULL,
        reached_at bigint NOT NULL,
        PRIMARY KEY (challenge_id, participant_id, bucket, value)
    )""",
    """CREATE TABLE challenge_completions (
        challenge_id text COLLATE "C" NOT NULL,
        participant_id text COLLATE "C" NOT NULL,
        occurrence text COLLATE "C" NOT NULL,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        period bigint NOT NULL,
        completed_at bigint NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (challenge_id, participant_id, occurrence)
    )""",
    """CREATE TABLE badge_awards (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        participant_id text COLLATE "C" NOT NULL,
        badge text COLLATE "C" NOT NULL,
        awarded_at bigint NOT NULL,
        reason text COLLATE "C" NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (tenant, mode, participant_id, badge)
    )""",
    """CREATE TABLE points_ledger (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        participant_id text COLLATE "C" NOT NULL,
        points bigint NOT NULL,
        reason text COLLATE "C" NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        at bigint NOT NULL
    )""",
    "CREATE INDEX points_ledger_participant ON points_ledger (tenant, mode, participant_id, at)",
    """CREATE TABLE points_totals (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        period text COLLATE "C" NOT NULL,
        bucket bigint NOT NULL,
        participant_id text COLLATE "C" NOT NULL,
        points bigint NOT NULL,
        reached_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode, period, bucket, participant_id)
    )""",
    "CREATE INDEX points_totals_board ON points_totals"
    " (tenant, mode, period, bucket, points DESC, reached_at, participant_id)",
    # The event catalog, folded from the whole log by the catalog consumer.
    """CREATE TABLE catalog (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        type text COLLATE "C" NOT NULL,
        count bigint NOT NULL,
        first_seen bigint NOT NULL,
        last_seen bigint NOT NULL,
        violations bigint NOT NULL,
        PRIMARY KEY (tenant, mode, type)
    )""",
    """CREATE TABLE catalog_properties (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        type text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        json_type text COLLATE "C" NOT NULL,
        PRIMARY KEY (tenant, mode, type, name, json_type)
    )""",
]

# What `headwater replay` rebuilds from the log (the outbox, the catalog, dead letters and
# positions are kept). In the order a batch writes them: the swap locks them in this order,
# so that it never waits for a batch that waits for it.
REBUILT_TABLES = (
    "trigger_windows",
    "actions",
    "enrollments",
    "profiles",
    "challenge_progress",
    "challenge_values",
    "challenge_completions",
    "badge_awards",
    "points_ledger",
    "points_totals",
    "fact_effects",
)
