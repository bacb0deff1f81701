"""The data protection tables (see `schema`): retention policies, the audit log, and the index
by which an erasure finds the outbox messages of an event or an action (`protection`)."""

from __future__ import annotations

PROTECTION_DDL: list[str] = [
    """CREATE TABLE retention (
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        days integer NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (tenant, mode)
    )""",
    """CREATE TABLE audit_log (
        position bigserial PRIMARY KEY,
        id text COLLATE "C" NOT NULL UNIQUE,
        tenant text COLLATE "C" NOT NULL,
        mode text COLLATE "C" NOT NULL,
        key_id text COLLATE "C" NOT NULL,
        action text COLLATE "C" NOT NULL,
        resource_type text COLLATE "C" NOT NULL,
        resource_id bytea,
        summary text NOT NULL,
        at bigint NOT NULL
    )""",
    "CREATE INDEX audit_log_tenant ON audit_log (tenant, position)",
    # The messages of an event or an action, which go when an erasure takes it.
    "CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_key)",
]
