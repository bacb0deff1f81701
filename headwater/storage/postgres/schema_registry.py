"""The registry tables (see `schema`).

What a client wrote and gets back verbatim is `bytea`: schemas and trigger and challenge
definitions (their bytes as sent), and the free text of keys, webhook endpoints and badges and
a schema's event type, which may hold a NUL character (`"\\u0000"` in JSON) that a PostgreSQL
`text` cannot. Ids, tenants, modes and badge keys are made by the server or checked against a
pattern, and are `COLLATE "C"`: lists are ordered by them in byte order, as SQLite sorts,
whatever collation the database was created with (a `bytea` sorts in byte order too). JSON the
registry encodes itself (mappings, settings) is `text`. Times are `bigint` microseconds since
the epoch, as the SQLite backend stores them, so that they read back exactly as it returns them.
"""

from __future__ import annotations

REGISTRY_DDL: list[str] = [
    """CREATE TABLE tenants (
        name text COLLATE "C" PRIMARY KEY,
        created_at bigint NOT NULL
    )""",
    """CREATE TABLE api_keys (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL REFERENCES tenants (name),
        role text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        prefix text COLLATE "C" NOT NULL,
        name bytea,
        key_hash text COLLATE "C" NOT NULL UNIQUE,
        created_at bigint NOT NULL,
        revoked_at bigint
    )""",
    "CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at, id)",
    # Versions are numbered per (tenant, mode, type) from 1 without gaps; the primary key is what
    # makes two processes putting a schema at once take consecutive numbers (see `put_schema`).
    """CREATE TABLE schemas (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        type bytea NOT NULL,
        version integer NOT NULL,
        enforcement text COLLATE "C" NOT NULL,
        schema bytea NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode, type, version)
    )""",
    # One row, bumped in the transaction of every change to a definition below, so that every
    # process can tell with one read that its compiled copies are stale.
    """CREATE TABLE definition_changes (
        id integer PRIMARY KEY CHECK (id = 1),
        version bigint NOT NULL
    )""",
    """CREATE TABLE triggers (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        definition bytea NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    )""",
    "CREATE INDEX triggers_scope ON triggers (tenant, mode, created_at, id)",
    """CREATE TABLE type_mappings (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        mappings text COLLATE "C" NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode)
    )""",
    """CREATE TABLE webhook_endpoints (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        url bytea NOT NULL,
        description bytea,
        subscriptions text[] NOT NULL,
        secret text COLLATE "C" NOT NULL,
        previous_secret text COLLATE "C",
        previous_secret_expires_at bigint,
        enabled boolean NOT NULL,
        disabled_reason text COLLATE "C",
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    )""",
    "CREATE INDEX webhook_endpoints_scope ON webhook_endpoints (tenant, mode, created_at, id)",
    """CREATE TABLE badges (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        name bytea NOT NULL,
        description bytea,
        image_url bytea,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode, key)
    )""",
    """CREATE TABLE challenges (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        definition bytea NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    )""",
    "CREATE INDEX challenges_scope ON challenges (tenant, mode, created_at, id)",
    """CREATE TABLE gamification_settings (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        settings text COLLATE "C" NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode)
    )""",
]
