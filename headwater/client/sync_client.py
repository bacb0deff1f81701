"""`Client`: track() queues and returns; a daemon thread sends the queue in gzip batches.

The thread is a daemon so that it never holds the interpreter open; an atexit hook closes the
client instead, which sends what is left for at most `exit_timeout` seconds. (A non-daemon
thread would be waited for before atexit hooks run, so an unreachable server would hang the
exit for good.)
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from headwater.client.delivery import Answer, Backoff, DeliveryError, Fail, Reply, Send, Settle, Wait, deliver
from headwater.client.events import MAX_BATCH_EVENTS, MAX_BODY_BYTES, QueuedEvent, encode_event
from headwater.client.options import OnError, OnRejected, Options, QueueFullError, report_failed, report_rejected
from headwater.client.outbox import EventResult, Outbox, Stats, WhenFull


class Client:
    """A Headwater client that sends events in the background. Thread-safe.

    `track` checks and queues an event and returns at once; a background thread sends the queue
    to `POST /v1/events` in gzip batches of up to `max_batch_events` events and
    `max_batch_bytes` bytes, as soon as a batch is full or the oldest event has waited
    `flush_interval` seconds, and retries until each event is accepted, a duplicate or rejected.
    At most `max_queue` events wait (and one batch is in flight); when the queue is full,
    `when_full="block"` makes `track` wait up to `block_timeout` seconds and then raise
    QueueFullError, and `"drop_oldest"` drops the oldest queued event (`stats.dropped`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_queue: int = 10_000,
        when_full: WhenFull = "block",
        block_timeout: float = 10.0,
        flush_interval: float = 1.0,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BODY_BYTES,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        exit_timeout: float = 5.0,
        on_rejected: OnRejected | None = None,
        on_error: OnError | None = None,
    ) -> None:
        options = Options(
            base_url,
            api_key,
            max_queue,
            when_full,
            block_timeout,
            flush_interval,
            max_batch_events,
            max_batch_bytes,
            timeout,
            backoff or Backoff(),
            exit_timeout,
            on_rejected,
            on_error,
        )
        self._start(options, Outbox(max_queue, when_full, max_batch_events, max_batch_bytes))
        self._thread = threading.Thread(target=self._run, name="headwater-client", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    @classmethod
    def send_left_over(cls, options: Options, outbox: Outbox) -> None:
        """Send what another client's outbox holds (an AsyncClient's, at exit) on this thread,
        for up to `exit_timeout` seconds: Python 3.12 starts no new thread in an atexit hook."""
        client = cls.__new__(cls)
        client._start(options, outbox)
        client._closed = True
        client._deadline = _now() + options.exit_timeout
        try:
            client._run()
        finally:
            client._http.close()

    def _start(self, options: Options, outbox: Outbox) -> None:
        self._options = options
        self._outbox = outbox
        self._lock = threading.Condition()
        self._flushing = 0  # flush() calls waiting: send without waiting for flush_interval
        self._waiting_for_room = 0  # track() calls blocked on a full queue: send now, likewise
        self._deadline: float | None = None  # set by close(): give up what is unsent by then
        self._closed = False
        self._error: DeliveryError | None = None  # for the next flush() to raise
        self._http = httpx.Client(base_url=options.base_url, headers=options.headers, timeout=options.timeout)

    # The caller's side

    def track(
        self,
        type: str,
        *,
        subject: str | None = None,
        data: Mapping[str, Any] | None = None,
        time: datetime | str | None = None,
        idempotency_key: str | None = None,
        source: str | None = None,
        channel: str | None = None,
    ) -> None:
        """Queue one event and return. Raises TypeError or ValueError at once for an argument
        that cannot make an event, QueueFullError (block) after `block_timeout` seconds of a full
        queue, RuntimeError once the client is closed."""
        body = encode_event(
            type,
            subject=subject,
            source=source,
            channel=channel,
            time=time,
            idempotency_key=idempotency_key,
            data=data,
            max_body_bytes=self._options.max_batch_bytes,
        )
        with self._lock:
            self._check_open()
            outbox = self._outbox
            if outbox.full and outbox.when_full == "block":
                self._waiting_for_room += 1
                self._lock.notify_all()
                try:
                    room = self._lock.wait_for(lambda: not outbox.full or self._closing, self._options.block_timeout)
                finally:
                    self._waiting_for_room -= 1
                self._check_open()
                if not room:
                    raise QueueFullError(
                        f"the queue has held {outbox.max_queue} events for {self._options.block_timeout} s"
                    )
            outbox.push(body, _now())
            # The flusher sleeps until the oldest event is due: wake it for a first event and a full batch.
            if len(outbox.queue) == 1 or outbox.batch_full():
                self._lock.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Send everything tracked so far now, and wait until every one of those events is
        accepted, a duplicate, rejected, dropped or failed. Raises TimeoutError if that takes
        longer than `timeout` seconds (None: no limit), and DeliveryError if a batch was refused
        for good (401, 403, ...) since the last flush."""
        with self._lock:
            target = self._outbox.next_seq - 1
            self._flushing += 1
            self._lock.notify_all()
            try:
                done = self._lock.wait_for(lambda: self._outbox.settled_through(target), timeout)
            finally:
                self._flushing -= 1
            if not done:
                left = self._outbox.stats()
                raise TimeoutError(f"{left.queued + left.in_flight} events still unsent after {timeout} s")
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, for at most `timeout` seconds (default `exit_timeout`), then stop
        the thread. What is still unsent by then is counted in `stats.unsent`. Idempotent."""
        timeout = self._options.exit_timeout if timeout is None else timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._deadline = _now() + timeout
            self._lock.notify_all()
        # Every attempt after close() is cut to the deadline, so this returns soon after it.
        self._thread.join(timeout + 1.0)
        self._http.close()
        atexit.unregister(self._at_exit)

    @property
    def stats(self) -> Stats:
        with self._lock:
            return self._outbox.stats()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _at_exit(self) -> None:
        self.close()

    @property
    def _closing(self) -> bool:
        return self._deadline is not None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this headwater Client is closed")

    # The flusher's side

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
            if batch is None:
                return
            self._deliver(batch)

    def _next_batch(self) -> list[QueuedEvent] | None:
        """Wait (holding the lock) for a batch that is due; None once closed and done."""
        outbox = self._outbox
        while True:
            if self._deadline is not None and (outbox.idle or _now() >= self._deadline):
                outbox.abandon()
                self._lock.notify_all()
                return None
            due_in = outbox.due_in(_now(), self._options.flush_interval)
            urgent = self._flushing or self._waiting_for_room or self._closing
            if due_in is not None and (due_in == 0 or urgent or outbox.batch_full()):
                batch = outbox.take()
                self._lock.notify_all()  # room in the queue for a blocked track()
                return batch
            self._lock.wait(due_in)

    def _deliver(self, batch: list[QueuedEvent]) -> None:
        steps = deliver(batch, self._options.backoff)
        reply: Reply = None
        try:
            while True:
                step = steps.send(reply)
                reply = None
                if isinstance(step, Send):
                    reply = self._post(step.body)
                elif isinstance(step, Wait):
                    if not self._sleep(step):
                        self._give_up()
                        return
                elif isinstance(step, Settle):
                    self._settled(list(step.events), list(step.results))
                elif isinstance(step, Fail):
                    self._failed(list(step.events), step.error)
        except StopIteration:
            return
        finally:
            steps.close()

    def _post(self, body: bytes) -> Answer | Exception:
        with self._lock:
            self._outbox.requests += 1
            self._outbox.bytes_sent += len(body)
            timeout = self._options.timeout
            if self._deadline is not None:
                timeout = max(0.0, min(timeout, self._deadline - _now()))
        try:
            response = self._http.post("/v1/events", content=body, timeout=timeout)
        except httpx.TransportError as error:  # connection refused or reset, a timeout
            return error
        return Answer(response.status_code, response.headers, response.content)

    def _sleep(self, wait: Wait) -> bool:
        """Sleep before a retry; False when close()'s deadline comes first."""
        end = _now() + wait.seconds
        with self._lock:
            self._outbox.retries += 1
            self._outbox.last_error = wait.reason
            while True:
                if self._deadline is not None and end >= self._deadline:
                    return False
                left = end - _now()
                if left <= 0:
                    return True
                self._lock.wait(left)

    def _give_up(self) -> None:
        """close()'s deadline comes before the next attempt could: count what is left unsent."""
        with self._lock:
            self._outbox.abandon()
            self._lock.notify_all()

    def _settled(self, events: list[QueuedEvent], results: list[EventResult]) -> None:
        # The callbacks first, so that a flush() that returns has seen them run.
        report_rejected(self._options, events, results)
        with self._lock:
            self._outbox.settle(events, results)
            self._lock.notify_all()

    def _failed(self, events: list[QueuedEvent], error: DeliveryError) -> None:
        report_failed(self._options, events, error)
        with self._lock:
            self._outbox.fail(events)
            self._outbox.last_error = str(error)
            self._error = self._error or error
            self._lock.notify_all()


def _now() -> float:
    return time.monotonic()
