"""The conventional way to build the same endpoint: FastAPI, a pydantic model, and one durable
SQLite commit per request (WAL, synchronous=FULL). Headwater should beat it by 2.5x.

Configured by environment, because uvicorn imports it by name:
BENCH_DB_PATH (the SQLite file) and BENCH_KEY (the bearer key it accepts).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from workload import INSERT, open_durable

DB_PATH = os.environ.get("BENCH_DB_PATH", "fastapi_bench.db")
KEY = os.environ.get("BENCH_KEY", "bench")


class Event(BaseModel):
    type: str = Field(min_length=1, max_length=128)
    subject: str | None = None
    source: str | None = None
    channel: str | None = None
    time: str | None = None
    idempotency_key: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


app = FastAPI()
conn = open_durable(DB_PATH)
# sqlite3 connections are not safe to share between threadpool workers without a lock.
conn_lock = threading.Lock()
ids = itertools.count()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/events")
def ingest(event: Event, authorization: str = Header(default="")) -> dict[str, Any]:
    if authorization != f"Bearer {KEY}":
        raise HTTPException(status_code=401, detail="bad key")
    now = time.time_ns() // 1000
    event_id = f"evt_{now:x}{next(ids):08x}"
    row = (
        event_id,
        "bench",
        "live",
        event.type,
        event.subject,
        event.source,
        event.channel,
        now,
        now,
        event.idempotency_key,
        json.dumps(event.data),
    )
    with conn_lock:
        conn.execute("BEGIN")
        conn.execute(INSERT, row)
        conn.execute("COMMIT")
    return {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"status": "accepted", "id": event_id}],
    }
