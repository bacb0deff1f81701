"""The registry: tenants, API keys, schemas and every definition clients write (triggers,
type mappings, webhook endpoints, badges, challenges, gamification settings).

Written by the API, read by everyone. Every change to a definition bumps one counter,
`definitions_version`, so a process holding compiled copies (a worker's rules, a server's
schemas) can tell they are stale with one cheap read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Literal, Protocol

import msgspec

from headwater.events import Mode
from headwater.storage.records import AuditEntry

Role = Literal["admin", "editor", "ingest", "viewer"]
Enforcement = Literal["off", "soft", "strict"]
DefinitionKind = Literal["triggers", "webhooks", "challenges"]


class KeyRecord(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    role: Role
    mode: Mode
    prefix: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None
    # An ingest key meant to sit in a web page: it may only ingest, and from a browser only on one
    # of `allowed_origins` (`scheme://host[:port]`, as browsers send `Origin`).
    publishable: bool = False
    allowed_origins: list[str] = msgspec.field(default_factory=list)


class SchemaVersion(msgspec.Struct, frozen=True):
    type: str
    version: int
    enforcement: Enforcement
    schema: msgspec.Raw
    created_at: datetime


class TriggerRecord(msgspec.Struct, frozen=True):
    """A trigger as stored; `definition` is the validated rule as the client wrote it."""

    id: str
    tenant: str
    mode: Mode
    definition: msgspec.Raw
    created_at: datetime
    updated_at: datetime


class PreviousSecret(msgspec.Struct, frozen=True, array_like=True):
    """A rotated-out webhook secret (as stored, like `WebhookEndpoint.secret`), which still signs until `expires_at`."""

    secret: str
    expires_at: datetime


class WebhookEndpoint(msgspec.Struct, frozen=True):
    """A receiver of signed webhook messages. `subscriptions` are topics such as
    `action.recommend` or `event.purchase`, or a namespace wildcard such as `action.*`.

    `secret` is as stored: `whsec_...` in clear, or sealed (`headwater.sealing`) when the
    server has a secret key. Every secret rotated out keeps signing until its grace period
    ends: `previous_secrets`, newest first."""

    id: str
    tenant: str
    mode: Mode
    url: str
    description: str | None
    subscriptions: list[str]
    secret: str
    previous_secrets: list[PreviousSecret]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


MAX_LIVE_SECRETS = 10  # each one is a signature in every delivery's header


def rotated_secrets(
    endpoint: WebhookEndpoint, secret: str, previous_expires_at: datetime, at: datetime
) -> list[PreviousSecret] | None:
    """The previous secrets once `secret` replaces the current one at `at`: the current one
    until `previous_expires_at`, then those still live, newest first; None when that would make
    more than `MAX_LIVE_SECRETS` live secrets (the rotation is refused)."""
    live = [p for p in endpoint.previous_secrets if p.expires_at > at]
    if len(live) + 2 > MAX_LIVE_SECRETS:
        return None
    return [PreviousSecret(endpoint.secret, previous_expires_at), *live]


def resealed(
    endpoint: WebhookEndpoint, reseal: Callable[[str, str], str | None]
) -> tuple[str | None, list[PreviousSecret]]:
    """The endpoint's secrets with `reseal` applied to each (see `Registry.reseal_webhook_secrets`):
    (the current one, the previous ones) when any changed, (None, the previous ones) otherwise."""
    changed = False

    def one(stored: str) -> str:
        nonlocal changed
        new = reseal(endpoint.id, stored)
        changed = changed or new is not None
        return stored if new is None else new

    secret = one(endpoint.secret)
    previous = [PreviousSecret(one(p.secret), p.expires_at) for p in endpoint.previous_secrets]
    return (secret if changed else None), previous


class BadgeRecord(msgspec.Struct, frozen=True):
    key: str
    name: str
    description: str | None
    image_url: str | None
    created_at: datetime
    updated_at: datetime


class ChallengeRecord(msgspec.Struct, frozen=True):
    """A challenge as stored; `definition` is the validated definition as the client wrote it."""

    id: str
    tenant: str
    mode: Mode
    definition: msgspec.Raw
    created_at: datetime
    updated_at: datetime


class GamificationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per tenant and mode. `levels` are ascending point thresholds: a participant's level is
    how many of them their points reach (null when there are none)."""

    timezone: str = "UTC"
    levels: list[int] = msgspec.field(default_factory=list)


class RateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A token bucket: `burst` events at once, refilled at `per_second` (see headwater.ratelimit)."""

    per_second: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]
    burst: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]


class Registry(Protocol):
    async def definitions_version(self) -> int:
        """A counter bumped by every change to any definition of any tenant."""

    async def scopes_with(self, kind: DefinitionKind) -> set[tuple[str, Mode]]:
        """The tenants and modes that have triggers, enabled webhook endpoints, or challenges."""

    # Tenants and keys.

    async def ensure_tenant(self, tenant: str) -> bool:
        """Create the tenant if it is new; True when it was created."""

    async def count_tenants(self) -> int: ...

    async def publishable_origins(self) -> set[str]:
        """Every origin an active publishable key allows, of every tenant."""

    async def add_key(self, record: KeyRecord, key_hash: str) -> None: ...

    async def find_key(self, key_hash: str) -> KeyRecord | None: ...

    async def list_keys(self, tenant: str) -> list[KeyRecord]: ...

    async def revoke_key(self, tenant: str, key_id: str, at: datetime) -> bool: ...

    # Schemas: per tenant and mode, like everything a tenant defines.

    async def put_schema(
        self, tenant: str, mode: Mode, type_: str, schema: bytes, enforcement: Enforcement, at: datetime
    ) -> SchemaVersion:
        """Store the next version of the type's schema."""

    async def latest_schemas(self, tenant: str, mode: Mode) -> list[SchemaVersion]: ...

    async def schema_versions(self, tenant: str, mode: Mode, type_: str) -> list[SchemaVersion]: ...

    # Triggers and type mappings.

    async def put_trigger(self, record: TriggerRecord) -> None:
        """Create or replace a trigger."""

    async def get_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> TriggerRecord | None: ...

    async def list_triggers(self, tenant: str, mode: Mode) -> list[TriggerRecord]: ...

    async def delete_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> bool: ...

    async def get_type_mappings(self, tenant: str, mode: Mode) -> dict[str, list[str]] | None:
        """The tenant's own mapping, or None when it uses the defaults."""

    async def put_type_mappings(
        self, tenant: str, mode: Mode, mappings: dict[str, list[str]], at: datetime
    ) -> None: ...

    # Webhook endpoints (their deliveries are derived state).

    async def create_webhook(self, endpoint: WebhookEndpoint) -> None: ...

    async def get_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> WebhookEndpoint | None: ...

    async def list_webhooks(self, tenant: str, mode: Mode) -> list[WebhookEndpoint]: ...

    async def webhooks_by_id(self, endpoint_ids: set[str]) -> dict[str, WebhookEndpoint]:
        """The endpoints of these ids, of any tenant (what the delivery worker signs with)."""

    async def update_webhook(self, endpoint: WebhookEndpoint) -> bool:
        """Store the endpoint's url, description, subscriptions, enabled, disabled_reason and
        updated_at. False when it does not exist."""

    async def disable_webhook(self, endpoint_id: str, reason: str, at: datetime) -> bool:
        """Disable an enabled endpoint; False when it was not enabled."""

    async def rotate_webhook_secret(
        self, tenant: str, mode: Mode, endpoint_id: str, secret: str, previous_expires_at: datetime, at: datetime
    ) -> WebhookEndpoint | Literal["too_many"] | None:
        """Make `secret` current, the current one previous until `previous_expires_at`, and drop
        the previous ones that have expired (`rotated_secrets`); None when there is no such
        endpoint, "too_many" (and nothing changed) when too many secrets would be live."""

    async def reseal_webhook_secrets(self, reseal: Callable[[str, str], str | None]) -> int:
        """Pass every stored secret of every endpoint (its id, the secret) to `reseal`, and store
        what it returns in its place (None: keep it), in one transaction; how many endpoints changed."""

    async def delete_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> bool: ...

    # Gamification definitions.

    async def create_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        """False (and nothing written) when the key is taken."""

    async def update_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool: ...

    async def get_badge(self, tenant: str, mode: Mode, key: str) -> BadgeRecord | None: ...

    async def list_badges(self, tenant: str, mode: Mode) -> list[BadgeRecord]: ...

    async def delete_badge(self, tenant: str, mode: Mode, key: str) -> bool: ...

    async def put_challenge(self, record: ChallengeRecord) -> None:
        """Create or replace."""

    async def get_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> ChallengeRecord | None: ...

    async def list_challenges(self, tenant: str, mode: Mode) -> list[ChallengeRecord]: ...

    async def delete_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> bool: ...

    async def get_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None: ...

    async def put_settings(self, tenant: str, mode: Mode, settings: GamificationSettings, at: datetime) -> None: ...

    # Rate limits (`key_id` None: the tenant's default for its keys)

    async def get_rate_limits(self, tenant: str, key_id: str) -> tuple[RateLimit | None, RateLimit | None]:
        """The key's own limit and its tenant's default."""

    async def put_rate_limit(self, tenant: str, key_id: str | None, limit: RateLimit | None) -> None:
        """Set, or with None remove, a key's limit or the tenant's default."""

    # Data protection.

    async def get_retention(self, tenant: str, mode: Mode) -> int | None:
        """The days the tenant's events are kept in this mode; None: forever."""

    async def put_retention(self, tenant: str, mode: Mode, days: int | None, at: datetime) -> None: ...

    async def retention_policies(self) -> list[tuple[str, Mode, int]]:
        """(tenant, mode, days) of every tenant and mode that keeps its events a limited time."""

    async def add_audit(self, entry: AuditEntry) -> None: ...

    async def list_audit(
        self, tenant: str, modes: Sequence[Mode], before: int | None, limit: int
    ) -> list[tuple[int, AuditEntry]]:
        """The tenant's entries of these modes, newest first, each with its position (the cursor:
        `before` lists those older than that one)."""
