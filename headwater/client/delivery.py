"""How one batch is delivered, with no I/O: a generator that yields what to do next (send this
body, wait this long, record these results) and is sent what came of it. `Client` runs it on a
thread with a blocking HTTP client, `AsyncClient` on its event loop; the retry rules are written
once, here.

The rules, from the server's statuses:
- 200: per-event results; `rejected` events are bad input and are never sent again.
- 413: the batch is too big for this server (its body or batch limit, or a rate-limit burst
  smaller than the batch): split it in two and send each half; a single event is rejected.
- 429, 503, 507 (and 408, 500, 502, 504, a timeout or a connection error): send the same body
  again, after `Retry-After` when the answer has one, else after an exponential back-off with
  jitter. The same body carries the same idempotency keys, so a batch that was stored but whose
  answer was lost (a server killed mid-request) comes back `duplicate`, not twice.
- anything else (400, 401, 403, 415, ...): the batch fails for good, and the error is surfaced.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from headwater.client.events import QueuedEvent, batch_body
from headwater.client.outbox import EventResult

RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507})


class DeliveryError(Exception):
    """A batch the server refused for good (401, 403, another 4xx, or an unreadable answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Send:
    """POST this gzip body to /v1/events; reply with an Answer, or the exception it raised."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep before the next attempt; reply with None."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Settle:
    """These events are answered; reply with None."""

    events: Sequence[QueuedEvent]
    results: Sequence[EventResult]


@dataclass(frozen=True, slots=True)
class Fail:
    """These events are refused for good; reply with None."""

    events: Sequence[QueuedEvent]
    error: DeliveryError


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive, as httpx gives them
    content: bytes


Step = Send | Wait | Settle | Fail
Reply = Answer | Exception | None


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 5.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int) -> float:
        """Exponential, with jitter so that many clients do not come back in step."""
        return min(self.maximum, self.initial * 2.0**attempt) * random.uniform(0.5, 1.0)


def deliver(events: Sequence[QueuedEvent], backoff: Backoff, compresslevel: int = 6) -> Generator[Step, Reply, None]:
    """Deliver the events, in order: every one ends in a Settle or a Fail, unless the driver stops
    the generator first (its time is up)."""
    pending: list[Sequence[QueuedEvent]] = [events]
    while pending:
        batch = pending.pop(0)
        # mtime=0: the same events make the same bytes on every attempt.
        body = gzip.compress(batch_body(batch), compresslevel=compresslevel, mtime=0)
        attempt = 0
        while True:
            reply = yield Send(body)
            if isinstance(reply, Exception):
                yield Wait(backoff.delay(attempt), f"{type(reply).__name__}: {reply}")
                attempt += 1
                continue
            assert isinstance(reply, Answer), reply
            if reply.status == 200:
                results = _results(reply, len(batch))
                if isinstance(results, DeliveryError):
                    yield Fail(batch, results)
                else:
                    yield Settle(batch, results)
                break
            if reply.status == 413:
                if len(batch) > 1:
                    half = len(batch) // 2
                    pending[:0] = [batch[:half], batch[half:]]
                else:
                    error: dict[str, object] = {"field": "", "code": "too_large", "message": _error_message(reply)}
                    yield Settle(batch, [EventResult("rejected", None, [error])])
                break
            if reply.status in RETRIED_STATUSES:
                after = retry_after(reply.headers, datetime.now(UTC))
                wait = backoff.delay(attempt) if after is None else min(after, backoff.max_retry_after)
                yield Wait(wait, f"{reply.status}: {_error_message(reply)}")
                attempt += 1
                continue
            yield Fail(batch, DeliveryError(reply.status, _error_message(reply)))
            break


def retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """`Retry-After` in seconds (it may be a number of seconds or an HTTP date); None if absent
    or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _results(reply: Answer, count: int) -> list[EventResult] | DeliveryError:
    try:
        body = json.loads(reply.content)
        results = [EventResult(r["status"], r["id"], r["errors"]) for r in body["results"]]
    except (ValueError, KeyError, TypeError) as error:
        return DeliveryError(reply.status, f"unreadable answer ({error}): {reply.content[:200]!r}")
    if len(results) != count or any(r.status not in ("accepted", "duplicate", "rejected") for r in results):
        return DeliveryError(reply.status, f"{len(results)} results for {count} events: {reply.content[:200]!r}")
    return results


def _error_message(reply: Answer) -> str:
    """The `error` of a Headwater error body, else the start of the body."""
    try:
        body: Any = json.loads(reply.content)
        return str(body["error"])
    except (ValueError, KeyError, TypeError):
        return reply.content[:200].decode("utf-8", "replace") or "(no body)"
