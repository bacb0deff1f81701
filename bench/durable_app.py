"""The durable reference for latency: a raw ASGI callable that commits every request to SQLite.

What someone writes by hand when each acknowledged request must be on disk: read the body,
INSERT it, COMMIT (WAL, synchronous=FULL: one fsync per request), then answer fixed JSON. The
commit runs on one writer thread, so the event loop is never blocked and the connection is
never shared between threads; requests queue for that thread in arrival order. No routing, no
validation, no group commit. Served by run.py with the same uvicorn settings as Headwater.

Configured by environment, because uvicorn imports it by name: BENCH_DB_PATH (the SQLite file).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bare_app import lifespan, read_body, respond

DB_PATH = os.environ.get("BENCH_DB_PATH", "durable_bench.db")

conn = sqlite3.connect(DB_PATH, isolation_level=None, check_same_thread=False)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="durable-writer")


def commit(body: bytes) -> None:
    conn.execute("BEGIN")
    conn.execute("INSERT INTO requests (body) VALUES (?)", (body,))
    conn.execute("COMMIT")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = await read_body(receive)
    if scope["method"] == "POST":  # not the health checks
        await asyncio.get_running_loop().run_in_executor(writer, commit, body)
    await respond(send)
