"""An event as the client queues it: checked and encoded once, when `track` is called.

Encoding at `track` time means a bad argument raises in the caller's own frame, the size of every
batch is known without encoding again, and a caller that changes its `data` dict afterwards does
not change what is sent. Only Python-level mistakes are caught here (a wrong type, data that is
not JSON, an event no request could carry); the server's rules (lengths, number ranges, schemas)
stay the server's, and an event that breaks them comes back `rejected` with the reasons.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The server's defaults (`HEADWATER_MAX_BATCH_EVENTS`, `HEADWATER_MAX_BODY_BYTES`, the body counted
# inflated). A server configured lower answers 413, and the client splits the batch.
MAX_BATCH_EVENTS = 1000
MAX_BODY_BYTES = 5 * 1024 * 1024

_BATCH_OPEN = b'{"events":['
_BATCH_CLOSE = b"]}"
BATCH_OVERHEAD = len(_BATCH_OPEN) + len(_BATCH_CLOSE)


@dataclass(slots=True)
class QueuedEvent:
    """One tracked event: its JSON, and its place in the order of `track` calls."""

    seq: int
    body: bytes
    queued_at: float
    settled: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The event as it is sent (for callbacks: rare, so decoded again rather than kept)."""
        event: dict[str, Any] = json.loads(self.body)
        return event


def encode_event(
    type: str,
    *,
    subject: str | None,
    source: str | None,
    channel: str | None,
    time: datetime | str | None,
    idempotency_key: str | None,
    data: Mapping[str, Any] | None,
    max_body_bytes: int,
) -> bytes:
    """The event's JSON, with an idempotency key of its own unless the caller gave one.

    Raises TypeError for an argument of the wrong type or data that JSON cannot hold, and
    ValueError for data JSON would mangle (NaN, infinity, lone surrogates) or an event too big
    to fit in a request body on its own."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a str, not {_name(type)}")
    event: dict[str, Any] = {"type": type}
    for name, value in (("subject", subject), ("source", source), ("channel", channel)):
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {_name(value)}")
            event[name] = value
    if time is not None:
        event["time"] = _time_text(time)
    if idempotency_key is None:
        # Given here, once, so that every resend of this event carries the same key and the
        # server answers it `duplicate` instead of storing it twice.
        idempotency_key = str(uuid.uuid4())
    elif not isinstance(idempotency_key, str):
        raise TypeError(f"idempotency_key must be a str or None, not {_name(idempotency_key)}")
    event["idempotency_key"] = idempotency_key
    if data is not None:
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a dict (a JSON object) or None, not {_name(data)}")
        event["data"] = data
    body = _json(event)
    if len(body) + BATCH_OVERHEAD > max_body_bytes:
        raise ValueError(
            f"the event is {len(body)} bytes as JSON: too big for a request body of at most {max_body_bytes} bytes"
        )
    return body


def batch_body(events: Sequence[QueuedEvent]) -> bytes:
    """`{"events": [...]}` of the events, uncompressed."""
    return _BATCH_OPEN + b",".join(e.body for e in events) + _BATCH_CLOSE


def _json(event: dict[str, Any]) -> bytes:
    try:
        return json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except TypeError as error:
        raise TypeError(f"data is not JSON-serialisable: {error}") from None
    except ValueError as error:  # NaN or infinity; a lone surrogate (UnicodeEncodeError)
        raise ValueError(f"data cannot be sent as JSON: {error}") from None


def _time_text(time: datetime | str) -> str:
    if isinstance(time, datetime):
        # A naive datetime goes without an offset, which the server reads as UTC.
        return time.isoformat()
    if isinstance(time, str):
        return time
    raise TypeError(f"time must be a datetime, an ISO 8601 str or None, not {_name(time)}")


def _name(value: object) -> str:
    return type(value).__name__
