"""Settings. Each has a default, a `HEADWATER_*` environment variable and, where it makes
sense, a CLI flag (the CLI passes flags in; the environment fills the rest)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HEADWATER_{name.upper()}", default)


def _flag(name: str, default: str = "0") -> bool:
    return _env(name, default).strip().lower() in ("1", "true", "yes", "on")


def parse_schedule(value: str) -> tuple[float, ...]:
    """Comma-separated seconds, e.g. `0,5,300`: the wait before each delivery attempt."""
    schedule = tuple(float(part) for part in value.split(",") if part.strip())
    if not schedule or any(not 0 <= s < 10**7 for s in schedule):
        raise ValueError(f"not a retry schedule of comma-separated seconds: {value!r}")
    return schedule


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("data_dir", "./headwater-data")))
    max_body_bytes: int = field(default_factory=lambda: int(_env("max_body_bytes", str(5 * 1024 * 1024))))
    max_batch_events: int = field(default_factory=lambda: int(_env("max_batch_events", "1000")))
    max_json_depth: int = field(default_factory=lambda: int(_env("max_json_depth", "64")))
    queue_max_events: int = field(default_factory=lambda: int(_env("queue_max_events", "200000")))
    key_cache_seconds: float = field(default_factory=lambda: float(_env("key_cache_seconds", "0.5")))
    sync_timeout: float = field(default_factory=lambda: float(_env("sync_timeout", "10")))
    catalog_interval: float = field(default_factory=lambda: float(_env("catalog_interval", "1.0")))
    # None: the Segment dialect's own default (headwater.dialects.segment.SKEW_THRESHOLD_SECONDS).
    segment_skew_seconds: float | None = field(
        default_factory=lambda: float(v) if (v := _env("segment_skew_seconds", "")) else None
    )

    # Processing (headwater.processing.worker). None: the count the data dir was created with
    # (8 for a new one); a count that differs from the recorded one is refused.
    partitions: int | None = field(default_factory=lambda: int(v) if (v := _env("partitions", "")) else None)
    lease_seconds: float = field(default_factory=lambda: float(_env("lease_seconds", "10")))

    # Webhook delivery (headwater.processing.webhooks).
    webhook_retry_schedule: tuple[float, ...] = field(
        default_factory=lambda: parse_schedule(_env("webhook_retry_schedule", "0,5,300,1800,7200,18000,36000,36000"))
    )
    webhook_timeout: float = field(default_factory=lambda: float(_env("webhook_timeout", "10")))
    webhook_rotation_grace: float = field(default_factory=lambda: float(_env("webhook_rotation_grace", "86400")))
    webhook_max_retry_after: float = field(default_factory=lambda: float(_env("webhook_max_retry_after", "3600")))
    webhook_concurrency: int = field(default_factory=lambda: int(_env("webhook_concurrency", "16")))
    webhook_poll_interval: float = field(default_factory=lambda: float(_env("webhook_poll_interval", "0.5")))
    # Off: this process only enqueues; another process (a worker) sends.
    webhook_worker: bool = field(default_factory=lambda: _flag("webhook_worker", "1"))
    allow_private_webhooks: bool = field(default_factory=lambda: _flag("allow_private_webhooks"))


    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
