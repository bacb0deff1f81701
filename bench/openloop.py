"""Open-loop load generator: POST one body at a fixed rate, latency from the scheduled time.

wrk is closed-loop: a slow response delays the next request, so stalls hide themselves
(coordinated omission). Here request i is due at start + i/rate whatever happens; it waits in
a queue until one of the keep-alive connections is free, and its latency runs from the time it
was due. A stalled server therefore shows up as a queue and as high percentiles.

    python bench/openloop.py --url http://127.0.0.1:8000/v1/events --rate 5000 \
        --seconds 5 --body-file body.json --key hw_live_...   # prints one JSON line

The scheduler wakes on uvloop's 1 ms timer, so up to ~1 ms of each latency can be the
generator's own; gen_lag_p99_ms reports that part.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import time
from dataclasses import dataclass, field
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


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return its status and whether the server closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def connection_worker(
    host: str, port: int, request: bytes, queue: asyncio.Queue[float | None],
    measure_from: float, tally: Tally,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (due := await queue.get()) is not None:
            try:
                writer.write(request)
                status, close = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                tally.socket_errors += 1
                close, status = True, 0
            if due >= measure_from and status:
                tally.latencies.append(time.perf_counter() - due)
                if status == 200:
                    tally.ok += 1
                elif status == 503:
                    tally.busy_503 += 1
                else:
                    tally.other_status += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def schedule(
    queue: asyncio.Queue[float | None], start: float, rate: float, total: int,
    measure_from: float, tally: Tally,
) -> None:
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due_count = min(total, int((now - start) * rate) + 1)
        while sent < due_count:
            due = start + sent / rate
            queue.put_nowait(due)
            if due >= measure_from:
                tally.gen_lags.append(now - due)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


async def run(
    url: str, body: bytes, key: str, rate: float, seconds: float, warmup: float,
    connections: int, drain_timeout: float,
) -> dict[str, float | int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, parts.path or "/", body, key)
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    tally = Tally()
    start = time.perf_counter() + 0.2  # let the connections open first
    measure_from = start + warmup
    total = int(rate * (warmup + seconds))
    workers = [
        asyncio.create_task(connection_worker(host, port, request, queue, measure_from, tally))
        for _ in range(connections)
    ]
    await schedule(queue, start, rate, total, measure_from, tally)
    for _ in workers:
        queue.put_nowait(None)
    done, pending = await asyncio.wait(workers, timeout=drain_timeout)
    for task in pending:
        task.cancel()
    # A worker that could not reconnect has died; its lost requests show up as incomplete.
    tally.socket_errors += sum(1 for task in done if task.exception() is not None)
    measured = total - int(rate * warmup)
    completed = len(tally.latencies)
    # A request still unanswered at the end counts as slower than anything measured.
    latencies = sorted(tally.latencies) + [math.inf] * max(0, measured - completed
                                                             - tally.socket_errors)
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
        "incomplete": measured - completed - tally.socket_errors,
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
    result = uvloop.run(run(
        args.url, body, args.key, args.rate, args.seconds, args.warmup,
        args.connections, args.drain_timeout,
    ))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
