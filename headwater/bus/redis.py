"""The Redis Streams bus (`--bus redis://host:port/db`, HEADWATER_BUS).

Keys (a deployment's own Redis database: the URL's `/db`):
- `headwater:events:<p>`: partition p's stream. An entry is `{seq, id}`: an event's log offset
  and id (the worker reads the event itself from the store). Its entry id is document 002's
  `streamId` and document 003's `message_id`.
- `headwater:published:<p>`: the catch-up publisher's mark `{seq, cursor}` (below).
- The channel `headwater:processed`: a worker says `<p>` there after a batch of p committed.
- The consumer group `headwater` on every stream, one consumer per worker (its owner name).

Publishing. After `log.append` commits, the API process XADDs the request's accepted events,
with those of the requests committed with it, in one command (a script), within
PUBLISH_TIMEOUT; when Redis is down or slow the events are accepted anyway with no entry id
(002's `streamId: null`), and the API stops trying for RETRY_SECONDS (a Redis that hangs must
not add its timeout to every request). An entry can be added and its id still
not reported (a timeout after the write): it is then in the stream, only the answer says null.
A worker publishes the award events it appends the same way.

Catch-up, in the worker that holds the partition's lease, every CATCH_UP_SECONDS. The mark says:
every event of the partition at or below `seq` has an entry, and every entry at or below
`cursor` (a stream id) is of an event at or below `seq`. So the entries after `cursor` name every
carried event beyond `seq`. A look reads those entries, then the partition's offsets beyond
`seq` in the store; when they all have an entry the mark moves to the last one; else it
publishes, in log order, the ones without an entry that were in the log at the previous look
too (an API process that committed them has had a whole interval, far more than its timeout,
to publish them: it died, or Redis was down), and the mark moves up to the first event still
without one. The mark moves only over events that have an entry, so nothing is left behind:
an API process that dies between commit and XADD, a Redis that was down, two API processes
publishing one partition out of log order, a late commit under the store's watermark (it is
not in the store's page until it commits, so the mark stops short of it). The worst case is an
event carried twice (two catch-up publishers during a lease's hand-over, a publisher that dies
before it writes the mark, an API whose publish outlived the interval): a worker reads by its
checkpoint, so a second entry is an extra look at nothing. A mark that is missing (a new
Redis, one that lost its data) starts at `floor`, what every consumer has applied.

Workers. A partition's runner reads its stream with XREADGROUP (BLOCK) as its wait for the log
to grow, XACKs an entry once the consumers' stored checkpoint has passed its offset (their
effects are committed), and after a batch commits PUBLISHes a notice for waiters. A runner that
starts (a new worker, a worker that took over from one SIGKILLed before its XACKs) claims the
group's pending entries (XAUTOCLAIM) and acknowledges them as its checkpoint passes them.
Catch-up trims the stream (XTRIM MINID, exact) below the first entry that some group has
pending or not yet received, and never past the mark's cursor.

Waiters. An API process subscribes to `headwater:processed`; a waiter re-reads the store's
checkpoints when woken, and at the latest every NOTICE_FALLBACK_SECONDS (a lost notice costs
that latency, no more). While the subscription is down, waiters poll the store as without a bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from headwater.bus import NOTICE_FALLBACK_SECONDS, BusError, Published
from headwater.bus.buckets import RedisBuckets
from headwater.storage.buckets import Buckets
from headwater.storage.log import EventLog

logger = logging.getLogger("headwater.bus")

PUBLISH_TIMEOUT = 0.15  # seconds an API request waits for Redis before it answers with null
RETRY_SECONDS = 1.0  # after a failed publish, requests do not try again for this long
COMMAND_TIMEOUT = 1.0  # any other command
PING_TIMEOUT = 0.5  # /readyz's look
CATCH_UP_SECONDS = 0.5
CATCH_UP_PAGE = 1000  # events of the store per look
SCAN_ENTRIES = 20 * CATCH_UP_PAGE  # entries after the cursor read per look
READ_ENTRIES = 1000
GROUP = "headwater"
CHANNEL = "headwater:processed"
# A group's entries in one command, in order: KEYS are the streams, ARGV each entry's seq and id.
# Packing a thousand XADDs into a pipeline cost an API process 13 µs of CPU an event in redis-py,
# more than the rest of a batch's ingest; the script's arguments cost a fraction of that.
PUBLISH_SCRIPT = """
local ids = {}
for i = 1, #KEYS do
    ids[i] = redis.call('XADD', KEYS[i], '*', 'seq', ARGV[2 * i - 1], 'id', ARGV[2 * i])
end
return ids
"""


def stream_key(partition: int) -> str:
    return f"headwater:events:{partition}"


def mark_key(partition: int) -> str:
    return f"headwater:published:{partition}"


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def _after(entry_id: str) -> str:
    """The id right after `entry_id`: XTRIM MINID keeps it and drops everything before."""
    ms, n = _id(entry_id)
    return f"{ms}-{n + 1}"


def _seqs(entries: Sequence[tuple[str, dict[str, str] | None]]) -> list[tuple[str, int]]:
    # An entry claimed after it was trimmed or deleted comes back without fields.
    return [(entry_id, int(fields["seq"])) for entry_id, fields in entries if fields]


class RedisReader:
    def __init__(self, bus: RedisBus, partition: int, consumer: str) -> None:
        self.bus = bus
        self.stream = stream_key(partition)
        self.consumer = consumer
        self._pending: list[tuple[str, int]] = []  # delivered to this consumer, not acknowledged
        self._ready = False  # the group exists and the pending entries of the group are claimed

    async def _prepare(self) -> None:
        r = self.bus.client
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        start = "0-0"
        while True:
            start, claimed, *_ = await r.xautoclaim(self.stream, GROUP, self.consumer, 0, start, count=READ_ENTRIES)
            self._pending += _seqs(claimed)
            if start == "0-0":
                break
        self._ready = True

    async def _ack(self, checkpoint: int) -> None:
        done = [entry_id for entry_id, seq in self._pending if seq <= checkpoint]
        if done:
            await self.bus.client.xack(self.stream, GROUP, *done)
            self._pending = [(entry_id, seq) for entry_id, seq in self._pending if seq > checkpoint]

    async def wait(self, checkpoint: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout + COMMAND_TIMEOUT):
                if not self._ready:
                    await self._prepare()
                await self._ack(checkpoint)
                while (left := deadline - loop.time()) > 0:
                    reply: Any = await self.bus.client.xreadgroup(
                        GROUP, self.consumer, {self.stream: ">"}, count=READ_ENTRIES, block=max(1, int(left * 1000))
                    )
                    entries = _seqs(reply[0][1]) if reply else []
                    self._pending += entries
                    if any(seq > checkpoint for _, seq in entries):
                        return
                    await self._ack(checkpoint)
        except ResponseError as exc:
            self._ready = False  # NOGROUP: Redis lost the stream; make the group again
            raise BusError(str(exc)) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusError(str(exc) or type(exc).__name__) from exc


class RedisBus:
    def __init__(self, url: str, *, listen: bool = False) -> None:
        # No retries inside redis-py: every caller has a deadline, and the next call reconnects.
        self.client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=None, socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        self.listen = listen
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._woken: dict[int, asyncio.Event] = {}
        self._down_until = 0.0
        self._looked: dict[int, int] = {}  # each partition's end at the previous catch-up look
        self._publish_script = self.client.register_script(PUBLISH_SCRIPT)
        self._outbox: list[tuple[Sequence[Published], asyncio.Future[list[str] | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.listen and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="headwater-bus-listener")

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher  # bounded by PUBLISH_TIMEOUT
            self._flusher = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.client.aclose()

    async def _call(self, command: Awaitable[Any], timeout: float | None = None) -> Any:
        try:
            # COMMAND_TIMEOUT is read per call, not bound as a default, so it can be configured.
            async with asyncio.timeout(COMMAND_TIMEOUT if timeout is None else timeout):
                return await command
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusError(str(exc) or type(exc).__name__) from exc

    async def ping(self) -> None:
        await self._call(self.client.ping(), PING_TIMEOUT)

    def buckets(self, fallback: Buckets) -> Buckets:
        return RedisBuckets(self, fallback)

    # The API

    async def publish(self, events: Sequence[Published]) -> list[str] | None:
        """The events' entry ids, or None when Redis did not answer within PUBLISH_TIMEOUT.
        Concurrent requests share one command (PUBLISH_SCRIPT), as their appends share a
        transaction: while one is out, the next gathers (redis-py's cost per command was a
        fifth of an API process's CPU under single events)."""
        if not events:
            return []
        if time.monotonic() < self._down_until:
            return None
        future: asyncio.Future[list[str] | None] = asyncio.get_running_loop().create_future()
        self._outbox.append((events, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="headwater-bus-publisher")
        try:
            return await asyncio.wait_for(asyncio.shield(future), PUBLISH_TIMEOUT)
        except TimeoutError:
            return None  # the entries may still be added: only the answer says null

    async def _flush(self) -> None:
        while self._outbox:
            jobs, self._outbox = self._outbox, []
            keys: list[str] = []
            args: list[int | str] = []
            for events, _ in jobs:
                for event in events:
                    keys.append(stream_key(event.partition))
                    args += (event.seq, event.event_id)
            try:
                ids = await self._call(self._publish_script(keys, args), PUBLISH_TIMEOUT)
            except BusError as exc:
                self._down_until = time.monotonic() + RETRY_SECONDS
                jobs += self._outbox  # those that came meanwhile would wait for a Redis that is not there
                self._outbox = []
                count = sum(len(events) for events, _ in jobs)
                logger.warning("could not publish %d events to Redis (the catch-up will): %s", count, exc)
                for _, future in jobs:
                    if not future.done():
                        future.set_result(None)
                return
            start = 0
            for events, future in jobs:
                if not future.done():
                    future.set_result([str(entry_id) for entry_id in ids[start : start + len(events)]])
                start += len(events)

    def woken(self, partition: int) -> asyncio.Event | None:
        if not self._listening:
            return None
        return self._woken.setdefault(partition, asyncio.Event())

    def _wake_all(self) -> None:
        woken, self._woken = self._woken, {}
        for event in woken.values():
            event.set()

    async def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=NOTICE_FALLBACK_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._listening = True
                        self._wake_all()  # notices sent while not listening are lost: look again
                    elif message["type"] == "message":
                        event = self._woken.pop(int(message["data"]), None)
                        if event is not None:
                            event.set()
            except (RedisError, OSError, ValueError) as exc:
                if self._listening:
                    logger.warning("lost the Redis subscription; waiters poll the store meanwhile: %s", exc)
                self._listening = False
                self._wake_all()  # waiting on a notice that cannot come: poll the store
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # The workers

    def reader(self, partition: int, consumer: str) -> RedisReader:
        return RedisReader(self, partition, consumer)

    async def notify(self, partition: int) -> None:
        await self._call(self.client.publish(CHANNEL, str(partition)), PUBLISH_TIMEOUT)

    async def catch_up(self, log: EventLog, partition: int, floor: Callable[[], Awaitable[int]]) -> bool:
        stream, mark_name = stream_key(partition), mark_key(partition)
        mark: dict[str, str] = await self._call(self.client.hgetall(mark_name))
        seq, cursor = (int(mark["seq"]), mark["cursor"]) if mark else (await floor(), "0-0")
        entries = _seqs(await self._call(self.client.xrange(stream, f"({cursor}", "+", count=SCAN_ENTRIES)))
        present = {s for _, s in entries}
        before, span = self._looked.get(partition), await log.read_partition(partition, seq, CATCH_UP_PAGE, frozenset())
        self._looked[partition] = span.end
        if span.examined == sum(1 for s in present if seq < s <= span.end):
            carried = span.end  # each offset in the span has an entry
        else:
            page = await log.read_partition(partition, seq, CATCH_UP_PAGE)
            old = before or 0  # in the log at the previous look already
            due = [(e.seq, e.id) for e in page.events if e.seq is not None and e.seq not in present and e.seq <= old]
            if due:
                pipe = self.client.pipeline(transaction=False)
                for s, event_id in due:
                    pipe.xadd(stream, {"seq": s, "id": event_id})
                await self._call(pipe.execute())
                logger.info("partition %d: published %d events Redis did not have", partition, len(due))
            present |= {s for s, _ in due}
            carried = seq
            for e in page.events:
                if e.seq not in present:
                    break
                assert e.seq is not None
                carried = e.seq
        for entry_id, s in entries:
            if s > carried:
                break
            cursor = entry_id
        await self._call(self.client.hset(mark_name, mapping={"seq": carried, "cursor": cursor}))
        await self._trim(stream, cursor)
        return span.examined >= CATCH_UP_PAGE and carried > seq

    async def _trim(self, stream: str, cursor: str) -> None:
        try:
            groups: list[dict[str, Any]] = await self._call(self.client.xinfo_groups(stream))
        except BusError as exc:
            if isinstance(exc.__cause__, ResponseError):
                return  # no such stream yet
            raise
        await self.trim(stream, cursor, groups)

    async def trim(self, stream: str, cursor: str, groups: list[dict[str, Any]]) -> None:
        """Drop the entries before `cursor`'s next one that every group in `groups` (XINFO GROUPS,
        read a moment ago) has received and acknowledged. A group can acknowledge in between:
        its XPENDING then has no first entry, and what it had received by the XINFO is the bound."""
        if not groups:
            return  # no consumer has read anything yet
        keep = [_after(cursor)]
        for group in groups:
            received = _after(group["last-delivered-id"])
            if group["pending"]:
                first = (await self._call(self.client.xpending(stream, group["name"])))["min"]
                keep.append(received if first is None else first)
            else:
                keep.append(received)
        await self._call(self.client.xtrim(stream, minid=min(keep, key=_id), approximate=False))
