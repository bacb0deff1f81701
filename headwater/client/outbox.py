"""The client's bounded queue and its ledger: what is waiting, what is in flight, what became of
every event. Plain state with no locking and no I/O: `Client` holds its lock around every call,
`AsyncClient` calls it from its one event loop.

Events leave the queue oldest first, one batch at a time, so they settle in the order they were
tracked, except that `drop_oldest` may settle newer events (as dropped) while an older batch is
still being retried: `flush` therefore waits for the oldest unsettled event, not for a count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from headwater.client.events import BATCH_OVERHEAD, QueuedEvent

WhenFull = Literal["block", "drop_oldest"]


@dataclass(frozen=True, slots=True)
class EventResult:
    """The server's answer for one event of a batch."""

    status: Literal["accepted", "duplicate", "rejected"]
    id: str | None
    errors: list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class Stats:
    """What became of the events tracked so far (a snapshot: read `client.stats` again for news).

    Every tracked event ends up in exactly one of accepted, duplicates, rejected, dropped, failed
    and unsent, or is still queued or in flight."""

    tracked: int  # events queued by track()
    queued: int  # waiting in the queue now
    in_flight: int  # taken by the flusher, not yet answered
    accepted: int  # stored by the server
    duplicates: int  # the server already had their idempotency key: stored once, earlier
    rejected: int  # bad input, refused by the server for good (see on_rejected); never resent
    dropped: int  # pushed out of a full queue by drop_oldest
    failed: int  # in a batch refused for good (401, 403, other 4xx; see on_error)
    unsent: int  # still unsent when close() (or the exit) ran out of time
    requests: int  # POSTs sent, retries and split batches included
    retries: int  # resends after a 429, 503, 507, 5xx, 408, timeout or connection error
    bytes_sent: int  # request bodies as sent (gzip-compressed)
    last_error: str | None  # the last reason a request did not succeed, for logs


class Outbox:
    def __init__(self, max_queue: int, when_full: WhenFull, max_batch_events: int, max_batch_bytes: int) -> None:
        self.max_queue = max_queue
        self.when_full = when_full
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.queue: deque[QueuedEvent] = deque()
        self.queued_bytes = 0
        self.in_flight: list[QueuedEvent] = []
        self.next_seq = 0
        self.accepted = self.duplicates = self.rejected = self.dropped = self.failed = self.unsent = 0
        self.requests = self.retries = self.bytes_sent = 0
        self.last_error: str | None = None

    # The queue

    @property
    def full(self) -> bool:
        return len(self.queue) >= self.max_queue

    def push(self, body: bytes, now: float) -> None:
        """Queue an event; the caller has made room (block) or drop_oldest makes it."""
        while self.full:
            dropped = self.queue.popleft()
            self.queued_bytes -= len(dropped.body) + 1
            dropped.settled = True
            self.dropped += 1
        self.queue.append(QueuedEvent(self.next_seq, body, now))
        self.queued_bytes += len(body) + 1  # and a comma
        self.next_seq += 1

    def batch_full(self) -> bool:
        """A whole batch is waiting: by count, or by bytes (the next event might not fit)."""
        return len(self.queue) >= self.max_batch_events or self.queued_bytes + BATCH_OVERHEAD >= self.max_batch_bytes

    def due_in(self, now: float, interval: float) -> float | None:
        """Seconds until the oldest queued event has waited `interval`; None when none waits."""
        if not self.queue:
            return None
        return max(0.0, self.queue[0].queued_at + interval - now)

    def take(self) -> list[QueuedEvent]:
        """The oldest events that fit in one request, moved from the queue to in flight."""
        batch: list[QueuedEvent] = []
        size = BATCH_OVERHEAD
        while self.queue and len(batch) < self.max_batch_events:
            event = self.queue[0]
            if batch and size + len(event.body) + 1 > self.max_batch_bytes:
                break
            self.queue.popleft()
            self.queued_bytes -= len(event.body) + 1
            size += len(event.body) + 1
            batch.append(event)
        self.in_flight.extend(batch)
        return batch

    def put_back(self, events: Sequence[QueuedEvent]) -> None:
        """Unsettled events of an interrupted batch go back to the front of the queue, in order."""
        back = [e for e in events if not e.settled]
        for event in reversed(back):
            self.queue.appendleft(event)
            self.queued_bytes += len(event.body) + 1
        returned = {id(e) for e in back}
        self.in_flight = [e for e in self.in_flight if not e.settled and id(e) not in returned]

    # The ledger

    def settle(self, events: Sequence[QueuedEvent], results: Sequence[EventResult]) -> None:
        for event, result in zip(events, results, strict=True):
            event.settled = True
            if result.status == "accepted":
                self.accepted += 1
            elif result.status == "duplicate":
                self.duplicates += 1
            else:
                self.rejected += 1
        self._prune()

    def fail(self, events: Sequence[QueuedEvent]) -> None:
        for event in events:
            event.settled = True
        self.failed += len(events)
        self._prune()

    def abandon(self) -> int:
        """Give up on everything queued or in flight (close ran out of time); how many."""
        left = [e for e in self.in_flight if not e.settled] + list(self.queue)
        for event in left:
            event.settled = True
        self.unsent += len(left)
        self.queue.clear()
        self.queued_bytes = 0
        self.in_flight.clear()
        return len(left)

    def _prune(self) -> None:
        self.in_flight = [e for e in self.in_flight if not e.settled]

    def settled_through(self, seq: int) -> bool:
        """Every event up to `seq` (in track order) is settled."""
        oldest = self.next_seq
        if self.in_flight:
            oldest = min(oldest, self.in_flight[0].seq)
        if self.queue:
            oldest = min(oldest, self.queue[0].seq)
        return oldest > seq

    @property
    def idle(self) -> bool:
        return not self.queue and not self.in_flight

    def stats(self) -> Stats:
        return Stats(
            tracked=self.next_seq,
            queued=len(self.queue),
            in_flight=len(self.in_flight),
            accepted=self.accepted,
            duplicates=self.duplicates,
            rejected=self.rejected,
            dropped=self.dropped,
            failed=self.failed,
            unsent=self.unsent,
            requests=self.requests,
            retries=self.retries,
            bytes_sent=self.bytes_sent,
            last_error=self.last_error,
        )
