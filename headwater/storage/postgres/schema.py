"""The versioned schema: each migration is a version and its statements, applied in one
transaction by `core.migrate`. Version 1 is the whole schema; a later change appends a
version (never edits an applied one)."""

from __future__ import annotations

from headwater.storage.postgres.limits import LIMITS_DDL
from headwater.storage.postgres.schema_derived import DERIVED_DDL
from headwater.storage.postgres.schema_log import LOG_DDL
from headwater.storage.postgres.schema_protection import PROTECTION_DDL
from headwater.storage.postgres.schema_registry import REGISTRY_DDL

CORE_DDL = [
    "CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)",
    # What the store was created with: `partitions` never changes afterwards.
    "CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL)",
]

# Publishable keys and their origins; every live previous webhook secret, not just one (its one
# previous secret becomes the first of the list: JSON `[[secret, expires_at_us], ...]`, newest first).
KEYS_AND_SECRETS_DDL = [
    "ALTER TABLE api_keys ADD COLUMN publishable boolean NOT NULL DEFAULT false",
    """ALTER TABLE api_keys ADD COLUMN allowed_origins text[] COLLATE "C" NOT NULL DEFAULT '{}'""",
    """ALTER TABLE webhook_endpoints ADD COLUMN previous_secrets text COLLATE "C" NOT NULL DEFAULT '[]'""",
    "UPDATE webhook_endpoints SET previous_secrets = json_build_array(json_build_array(previous_secret,"
    " previous_secret_expires_at))::text WHERE previous_secret IS NOT NULL AND previous_secret_expires_at IS NOT NULL",
    "ALTER TABLE webhook_endpoints DROP COLUMN previous_secret, DROP COLUMN previous_secret_expires_at",
]

Migrations = list[tuple[int, list[str]]]
MIGRATIONS: Migrations = [
    (1, [*CORE_DDL, *LOG_DDL, *REGISTRY_DDL, *DERIVED_DDL]),
    # Data protection: retention policies, the audit log, the outbox by message (erasure).
    (2, PROTECTION_DDL),
    # Rate limits: keys' and tenants' limits, and the buckets API processes share without a bus.
    (3, LIMITS_DDL),
    # Keys' checksummed format and publishable origins; webhook secrets sealed, every live previous one kept.
    (4, KEYS_AND_SECRETS_DDL),
]
VERSION = MIGRATIONS[-1][0]
