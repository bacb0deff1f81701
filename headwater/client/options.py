"""What `Client` and `AsyncClient` share: their settings, checked once, and their callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headwater.client.delivery import Backoff, DeliveryError
from headwater.client.events import MAX_BATCH_EVENTS, QueuedEvent
from headwater.client.outbox import EventResult, WhenFull

logger = logging.getLogger("headwater.client")

OnRejected = Callable[[dict[str, Any], list[dict[str, object]]], None]
OnError = Callable[[DeliveryError, list[dict[str, Any]]], None]


class QueueFullError(Exception):
    """track() waited `block_timeout` seconds for room in a full queue (`when_full="block"`)."""


@dataclass(frozen=True)
class Options:
    """The clients' settings; their defaults are in the clients' signatures."""

    base_url: str
    api_key: str
    max_queue: int
    when_full: WhenFull
    block_timeout: float
    flush_interval: float
    max_batch_events: int
    max_batch_bytes: int
    timeout: float
    backoff: Backoff
    exit_timeout: float
    on_rejected: OnRejected | None
    on_error: OnError | None

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ValueError("api_key must be a non-empty str")
        if self.when_full not in ("block", "drop_oldest"):
            raise ValueError(f"when_full must be 'block' or 'drop_oldest', not {self.when_full!r}")
        if self.max_queue < 1 or not 1 <= self.max_batch_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_queue must be at least 1 and max_batch_events 1 to {MAX_BATCH_EVENTS}")
        for name in ("block_timeout", "flush_interval", "timeout", "exit_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": "headwater-python",
        }


def report_rejected(options: Options, events: list[QueuedEvent], results: list[EventResult]) -> None:
    """Tell the caller about rejected events: their callback, else a warning in the log."""
    for event, result in zip(events, results, strict=True):
        if result.status != "rejected":
            continue
        if options.on_rejected is None:
            logger.warning("headwater rejected an event: %s: %s", result.errors, event.body[:200])
            continue
        try:
            options.on_rejected(event.as_dict(), result.errors)
        except Exception:
            # A failing callback must not stop the delivery of everything after it.
            logger.exception("on_rejected raised")


def report_failed(options: Options, events: list[QueuedEvent], error: DeliveryError) -> None:
    logger.error("headwater refused a batch of %d events: %s", len(events), error)
    if options.on_error is None:
        return
    try:
        options.on_error(error, [e.as_dict() for e in events])
    except Exception:
        logger.exception("on_error raised")
