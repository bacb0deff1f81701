"""Settings. Each has a default, a `HEADWATER_*` environment variable and, where it makes
sense, a CLI flag (the CLI passes flags in; the environment fills the rest)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HEADWATER_{name.upper()}", default)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("data_dir", "./headwater-data")))
    max_body_bytes: int = field(default_factory=lambda: int(_env("max_body_bytes", str(5 * 1024 * 1024))))
    max_batch_events: int = field(default_factory=lambda: int(_env("max_batch_events", "1000")))
    max_json_depth: int = field(default_factory=lambda: int(_env("max_json_depth", "64")))
    queue_max_events: int = field(default_factory=lambda: int(_env("queue_max_events", "200000")))
    key_cache_seconds: float = field(default_factory=lambda: float(_env("key_cache_seconds", "0.5")))
    catalog_interval: float = field(default_factory=lambda: float(_env("catalog_interval", "1.0")))
    # None: the Segment dialect's own default (headwater.dialects.segment.SKEW_THRESHOLD_SECONDS).
    segment_skew_seconds: float | None = field(
        default_factory=lambda: float(v) if (v := _env("segment_skew_seconds", "")) else None
    )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "headwater.db"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
