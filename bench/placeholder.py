"""A stand-in for the `headwater` CLI, so the benchmark can be checked without the real server.

Speaks the same commands run.py uses (`keys create`, `serve`) and the same ingest contract
(bearer key, single event or batch, durable group commit), in the fewest lines: a raw ASGI
callable and one writer thread. Its figures are NOT Headwater's; run.py labels them.

    python bench/run.py --placeholder
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import secrets
import threading
import time
from typing import Any

import msgspec
import uvicorn
from ceiling import Batch, Event
from workload import INSERT, open_durable

Pending = tuple[list[tuple[Any, ...]], asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class GroupCommitWriter(threading.Thread):
    """Inserts everything queued in one transaction, commits once, then wakes every waiter."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.conn = open_durable(path)
        self.queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            pending = [self.queue.get()]
            while not self.queue.empty():
                pending.append(self.queue.get_nowait())
            self.conn.execute("BEGIN")
            for rows, _, _ in pending:
                self.conn.executemany(INSERT, rows)
            self.conn.execute("COMMIT")
            for _, loop, future in pending:
                loop.call_soon_threadsafe(future.set_result, None)


def make_app(data_dir: str) -> Any:
    with open(os.path.join(data_dir, "key")) as f:
        expected_auth = f"Bearer {f.read().strip()}".encode()
    writer = GroupCommitWriter(os.path.join(data_dir, "events.db"))
    writer.start()
    decode_one = msgspec.json.Decoder(Event).decode
    decode_batch = msgspec.json.Decoder(Batch).decode
    counter = iter(range(1 << 62))

    async def respond(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            return await respond(send, 200, b'{"status":"ok"}')
        if dict(scope["headers"]).get(b"authorization") != expected_auth:
            return await respond(send, 401, b'{"error":"unauthorized"}')
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            events = decode_batch(body).events if body.startswith(b'{"events"') else [decode_one(body)]
        except msgspec.ValidationError as exc:
            return await respond(send, 422, msgspec.json.encode({"error": str(exc)}))
        now = time.time_ns() // 1000
        rows = [
            (
                f"evt_{now:x}{next(counter):08x}",
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
            for e in events
        ]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        writer.queue.put((rows, loop, future))
        await future
        result = {
            "accepted": len(rows),
            "duplicates": 0,
            "rejected": 0,
            "results": [{"status": "accepted", "id": row[0]} for row in rows],
        }
        await respond(send, 200, msgspec.json.encode(result))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True)
    create.add_argument("--data-dir", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    if args.command == "keys":
        key = f"hw_live_{secrets.token_hex(16)}"
        with open(os.path.join(args.data_dir, "key"), "w") as f:
            f.write(key)
        print(key)
    else:
        uvicorn.run(
            make_app(args.data_dir),
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            lifespan="off",
        )


if __name__ == "__main__":
    main()
