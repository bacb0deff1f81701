"""Open-loop load generator: POST one body at a fixed rate, latency from the scheduled time.

wrk is closed-loop: a slow response delays the next request, so stalls hide themselves
(coordinated omission). Here request i is due at start + i/rate whatever happens; it waits in
a queue until one of the keep-alive connections is free, and its latency runs from the time it
was due. A stalled server therefore shows up as a queue and as high percentiles.

    python bench/openloop.py --url http://127.0.0.1:8000/v1/events --rate 5000 \
        --seconds 5 --body-file body.json --key hw_live_...   # prints one JSON line

Requests are released on uvloop's 1 ms timer and on every response, so a little of each
latency can be the generator's own; gen_lag_p99_ms reports that part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import uvloop


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    gen_lags: list[float] = field(default_factory=list)
    ok: int = 0
    busy_503: int = 0
    other_status: int = 0
    socket_errors: int = 0


def build_request(host: str, port: int, path: str, body: bytes, key: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight.

    Callbacks rather than streams keep the generator's CPU per request low: it shares the
    machine with the server it measures. Responses must carry Content-Length (uvicorn's do).
    """

    def __init__(self, generator: OpenLoop) -> None:
        self.generator = generator
        self.buffer = bytearray()
        self.due: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.generator.ready(self)

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(self.generator.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self.generator.tally.socket_errors += 1
                assert self.transport is not None
                self.transport.close()  # framing we do not parse: drop the connection
                return
            length = int(head[at + 17 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            if self.due is None:
                # Not an answer to a request: the server closing a connection idle past its
                # header deadline (a 408). It goes; `lost` opens another.
                assert self.transport is not None
                self.transport.close()
                return
            self.generator.answered(self, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.generator.lost(self)


class OpenLoop:
    def __init__(
        self, host: str, port: int, request: bytes, rate: float, start: float, warmup: float, seconds: float
    ) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.rate = rate
        self.start = start
        self.measure_from = start + warmup
        self.total = int(rate * (warmup + seconds))
        self.sent = 0
        self.tally = Tally()
        self.idle: list[Connection] = []
        self.backlog: deque[float] = deque()
        self.in_flight = 0
        self.connections: set[Connection] = set()
        self.closing = False
        self.reconnecting: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: Connection(self), self.host, self.port)

    def ready(self, connection: Connection) -> None:
        self.connections.add(connection)
        if self.backlog:
            self.in_flight += 1
            connection.send(self.backlog.popleft())
        else:
            self.idle.append(connection)

    def dispatch(self, due: float) -> None:
        while self.idle and (self.idle[-1].transport is None or self.idle[-1].transport.is_closing()):
            self.idle.pop()  # closed by the server, and not told yet
        if self.idle:
            self.in_flight += 1
            self.idle.pop().send(due)
        else:
            self.backlog.append(due)  # every connection busy: the wait counts as latency

    def answered(self, connection: Connection, status: int) -> None:
        due, connection.due = connection.due, None
        self.in_flight -= 1
        if due is not None and due >= self.measure_from:
            tally = self.tally
            tally.latencies.append(time.perf_counter() - due)
            if status == 200:
                tally.ok += 1
            elif status == 503:
                tally.busy_503 += 1
            else:
                tally.other_status += 1
        self.release()
        self.ready(connection)

    def lost(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if self.closing:
            return
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.due is not None:
            self.in_flight -= 1
            if connection.due >= self.measure_from:
                self.tally.socket_errors += 1
        self.reconnecting.add(asyncio.get_running_loop().create_task(self.reconnect()))

    async def reconnect(self) -> None:
        with contextlib.suppress(OSError):
            await self.connect()

    def release(self) -> None:
        """Dispatch every request that is due by now."""
        now = time.perf_counter()
        due_count = min(self.total, int((now - self.start) * self.rate) + 1)
        while self.sent < due_count:
            due = self.start + self.sent / self.rate
            self.dispatch(due)
            if due >= self.measure_from:
                self.tally.gen_lags.append(now - due)
            self.sent += 1

    async def schedule(self) -> None:
        # uvloop's timers tick in whole milliseconds and a shorter sleep would spin, taking a
        # core from the server under test. So requests are also released on every response
        # (see answered), which at these rates happens every few hundred microseconds.
        while self.sent < self.total:
            self.release()
            await asyncio.sleep(0.001)

    async def drain(self, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while (self.in_flight or self.backlog) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.closing = True
        for task in self.reconnecting:
            task.cancel()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


async def run(
    url: str,
    body: bytes,
    key: str,
    rate: float,
    seconds: float,
    warmup: float,
    connections: int,
    drain_timeout: float,
) -> dict[str, float | int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, parts.path or "/", body, key)
    start = time.perf_counter() + 0.5  # let the connections open first
    generator = OpenLoop(host, port, request, rate, start, warmup, seconds)
    await asyncio.gather(*(generator.connect() for _ in range(connections)))
    await generator.schedule()
    await generator.drain(drain_timeout)
    generator.close()
    tally = generator.tally
    measured = generator.total - int(rate * warmup)
    completed = len(tally.latencies)
    incomplete = max(0, measured - completed - tally.socket_errors)
    # A request still unanswered at the end counts as slower than anything measured.
    latencies = sorted(tally.latencies) + [math.inf] * incomplete
    lags = sorted(tally.gen_lags)
    ms = 1000.0
    return {
        "rate": rate,
        "measured": measured,
        "completed": completed,
        "ok": tally.ok,
        "busy_503": tally.busy_503,
        "other_status": tally.other_status,
        "socket_errors": tally.socket_errors,
        "incomplete": incomplete,
        "p50_ms": percentile(latencies, 50) * ms,
        "p90_ms": percentile(latencies, 90) * ms,
        "p99_ms": percentile(latencies, 99) * ms,
        "p999_ms": percentile(latencies, 99.9) * ms,
        "max_ms": latencies[-1] * ms if latencies else math.nan,
        "gen_lag_p99_ms": percentile(lags, 99) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    gc.disable()  # a collector pause here would be billed to the server
    result = uvloop.run(
        run(
            args.url,
            body,
            args.key,
            args.rate,
            args.seconds,
            args.warmup,
            args.connections,
            args.drain_timeout,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
