"""`AsyncClient`: the same client on an asyncio event loop; its flusher is a task.

The task starts with the first `track`, on the loop that calls it, and `aclose()` ends it. An
event loop that ends without `aclose()` (asyncio.run returning) cancels the task: the batch in
flight goes back to the queue, and at interpreter exit a blocking `Client` sends the queue for
up to `exit_timeout` seconds, since no loop is left to run on by then.
"""

from __future__ import annotations

import asyncio
import atexit
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
from headwater.client.sync_client import Client


class AsyncClient:
    """`Client`'s API for asyncio: `await track(...)`, `await flush()`, `await aclose()` (or
    `async with`). Not thread-safe: use it from one event loop."""

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
        self._options = Options(
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
        self._outbox = Outbox(max_queue, when_full, max_batch_events, max_batch_bytes)
        self._changed = asyncio.Condition()
        self._flushing = 0
        self._waiting_for_room = 0
        self._deadline: float | None = None
        self._closed = False
        self._error: DeliveryError | None = None
        self._http = httpx.AsyncClient(base_url=base_url, headers=self._options.headers, timeout=timeout)
        self._task: asyncio.Task[None] | None = None
        atexit.register(self._at_exit)

    async def track(
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
        """As `Client.track`; with `when_full="block"` it awaits room, up to `block_timeout`."""
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
        async with self._changed:
            self._check_open()
            self._ensure_flusher()
            outbox = self._outbox
            if outbox.full and outbox.when_full == "block":
                self._waiting_for_room += 1
                self._changed.notify_all()
                try:
                    async with asyncio.timeout(self._options.block_timeout):
                        await self._changed.wait_for(lambda: not outbox.full or self._closed)
                except TimeoutError:
                    raise QueueFullError(
                        f"the queue has held {outbox.max_queue} events for {self._options.block_timeout} s"
                    ) from None
                finally:
                    self._waiting_for_room -= 1
                self._check_open()
            outbox.push(body, _now())
            if len(outbox.queue) == 1 or outbox.batch_full():
                self._changed.notify_all()

    async def flush(self, timeout: float | None = None) -> None:
        """As `Client.flush`."""
        async with self._changed:
            if not self._outbox.idle:
                self._ensure_flusher()
            target = self._outbox.next_seq - 1
            self._flushing += 1
            self._changed.notify_all()
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self._outbox.settled_through(target))
            except TimeoutError:
                left = self._outbox.stats()
                raise TimeoutError(f"{left.queued + left.in_flight} events still unsent after {timeout} s") from None
            finally:
                self._flushing -= 1
            error, self._error = self._error, None
        if error is not None:
            raise error

    async def aclose(self, timeout: float | None = None) -> None:
        """As `Client.close`."""
        timeout = self._options.exit_timeout if timeout is None else timeout
        async with self._changed:
            if self._closed:
                return
            self._closed = True
            self._deadline = _now() + timeout
            self._changed.notify_all()
        if self._task is not None:
            await self._task
        else:
            self._outbox.abandon()
        await self._http.aclose()
        atexit.unregister(self._at_exit)

    @property
    def stats(self) -> Stats:
        return self._outbox.stats()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _at_exit(self) -> None:
        """No event loop is left at exit: send what the loop left behind with a blocking client."""
        if self._closed or self._outbox.idle:
            return
        self._closed = True
        self._outbox.put_back(self._outbox.in_flight)
        Client.send_left_over(self._options, self._outbox)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this headwater AsyncClient is closed")

    def _ensure_flusher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="headwater-client")

    # The flusher's side

    async def _run(self) -> None:
        while True:
            async with self._changed:
                batch = await self._next_batch()
            if batch is None:
                return
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                # The loop is ending without aclose(): keep the batch for the exit hook.
                self._outbox.put_back(batch)
                raise

    async def _next_batch(self) -> list[QueuedEvent] | None:
        outbox = self._outbox
        while True:
            if self._deadline is not None and (outbox.idle or _now() >= self._deadline):
                outbox.abandon()
                self._changed.notify_all()
                return None
            due_in = outbox.due_in(_now(), self._options.flush_interval)
            urgent = self._flushing or self._waiting_for_room or self._deadline is not None
            if due_in is not None and (due_in == 0 or urgent or outbox.batch_full()):
                batch = outbox.take()
                self._changed.notify_all()  # room in the queue for a blocked track()
                return batch
            try:
                async with asyncio.timeout(due_in):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _deliver(self, batch: list[QueuedEvent]) -> None:
        steps = deliver(batch, self._options.backoff)
        reply: Reply = None
        try:
            while True:
                step = steps.send(reply)
                reply = None
                if isinstance(step, Send):
                    reply = await self._post(step.body)
                elif isinstance(step, Wait):
                    if not await self._sleep(step):
                        await self._give_up()
                        return
                elif isinstance(step, Settle):
                    await self._settled(list(step.events), list(step.results))
                elif isinstance(step, Fail):
                    await self._failed(list(step.events), step.error)
        except StopIteration:
            return
        finally:
            steps.close()

    async def _post(self, body: bytes) -> Answer | Exception:
        self._outbox.requests += 1
        self._outbox.bytes_sent += len(body)
        timeout = self._options.timeout
        if self._deadline is not None:
            timeout = max(0.0, min(timeout, self._deadline - _now()))
        try:
            response = await self._http.post("/v1/events", content=body, timeout=timeout)
        except httpx.TransportError as error:
            return error
        return Answer(response.status_code, response.headers, response.content)

    async def _sleep(self, wait: Wait) -> bool:
        end = _now() + wait.seconds
        self._outbox.retries += 1
        self._outbox.last_error = wait.reason
        async with self._changed:
            while True:
                if self._deadline is not None and end >= self._deadline:
                    return False
                left = end - _now()
                if left <= 0:
                    return True
                try:
                    async with asyncio.timeout(left):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    async def _give_up(self) -> None:
        async with self._changed:
            self._outbox.abandon()
            self._changed.notify_all()

    async def _settled(self, events: list[QueuedEvent], results: list[EventResult]) -> None:
        # The callbacks first, so that a flush() that returns has seen them run.
        report_rejected(self._options, events, results)
        async with self._changed:
            self._outbox.settle(events, results)
            self._changed.notify_all()

    async def _failed(self, events: list[QueuedEvent], error: DeliveryError) -> None:
        report_failed(self._options, events, error)
        async with self._changed:
            self._outbox.fail(events)
            self._outbox.last_error = str(error)
            self._error = self._error or error
            self._changed.notify_all()


def _now() -> float:
    return time.monotonic()
