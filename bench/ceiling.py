"""The ceiling for batch ingest: parse + durable insert, in-process, with no HTTP at all.

Each round decodes one 1,000-event batch body with a reused msgspec Decoder into typed
Structs (data kept as msgspec.Raw, never re-encoded), inserts the rows with executemany
into the shared events table (WAL, synchronous=FULL) and commits: one fsync per batch.

    python bench/ceiling.py --seconds 5        # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Annotated

import msgspec
from workload import BATCH_SUBJECTS, INSERT, batch_body, open_durable

EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Event(msgspec.Struct):
    type: EventType
    subject: str | None = None
    source: str | None = None
    channel: str | None = None
    time: str | None = None
    idempotency_key: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"{}")


class Batch(msgspec.Struct):
    events: list[Event]


def measure_ceiling(seconds: float, data_dir: str, subjects: int) -> dict[str, float]:
    body = batch_body(subjects=subjects)
    decoder = msgspec.json.Decoder(Batch)
    conn = open_durable(os.path.join(data_dir, "ceiling.db"))
    seq = 0
    events = 0
    batches = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        batch = decoder.decode(body)
        now = time.time_ns() // 1000
        rows = []
        for e in batch.events:
            seq += 1
            rows.append(
                (
                    f"evt_{now:x}{seq:08x}",
                    "bench",
                    "live",
                    e.type,
                    e.subject,
                    e.source,
                    e.channel,
                    now,
                    now,
                    e.idempotency_key,
                    bytes(e.data).decode(),
                )
            )
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
        events += len(rows)
        batches += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    conn.close()
    return {
        "events": events,
        "batches": batches,
        "seconds": elapsed,
        "cpu_s": cpu,
        "events_per_s": events / elapsed,
        "cpu_us_per_event": cpu / events * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--subjects", type=int, default=BATCH_SUBJECTS, help="distinct subjects per batch (default: %(default)s)"
    )
    parser.add_argument("--data-dir", help="where to put the SQLite file (default: a temp dir)")
    args = parser.parse_args()
    if args.data_dir:
        result = measure_ceiling(args.seconds, args.data_dir, args.subjects)
    else:
        with tempfile.TemporaryDirectory(prefix="hw-ceiling-") as data_dir:
            result = measure_ceiling(args.seconds, data_dir, args.subjects)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
