"""Real PostgreSQL and Redis servers for the suite: each its own process on a free loopback
port, in a temporary directory, gone when the run ends. Run as root, PostgreSQL is
initialised and run as `nobody` (it refuses to run as root)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import asyncpg

TEMPLATE = "headwater_template"
SUPERUSER = "headwater"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install the Debian package postgresql (.ci/run does)")
    return found


def _as_postgres_user() -> dict[str, object]:
    return {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}


class Postgres:
    """A PostgreSQL cluster of its own. `fsync=off` unless `durable`: the suite's tests kill
    processes, not the machine, and a commit a killed server had acknowledged is in the OS's
    page cache. The benchmarks run it `durable`, as SQLite runs there (synchronous=FULL)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="headwater-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._lock = threading.Lock()
        self._ahead: concurrent.futures.ThreadPoolExecutor | None = None
        self._next: concurrent.futures.Future[str] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> Postgres:
        os.chmod(self.dir, 0o777)
        data = self.dir / "data"
        if not data.exists():
            subprocess.run(
                [_postgres_bin("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True,
                capture_output=True,
                **_as_postgres_user(),  # type: ignore[arg-type]
            )
        self.process = subprocess.Popen(
            [
                _postgres_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                *([] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]),
                "-c",
                "max_connections=400",
                "-c",
                "shared_buffers=128MB",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log(),
            **_as_postgres_user(),  # type: ignore[arg-type]
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # pg_isready, not a client: a connection refused while the server starts can leave a
        # client's socket open until the garbage collector finds it.
        ready = [_postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-d", "postgres"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("PostgreSQL did not start:\n" + (self.dir / "server.log").read_text()[-2000:])
            if subprocess.run(ready, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("PostgreSQL did not answer within 30 s")

    def sql(self, database: str, statement: str) -> object:
        async def run() -> object:
            conn = await asyncpg.connect(self.url(database))
            try:
                return await conn.fetchval(statement)
            finally:
                await conn.close()

        return asyncio.run(run())

    def _log(self) -> BinaryIO:
        self._log_file = open(self.dir / "server.log", "ab")  # noqa: SIM115 - closed by stop
        return self._log_file

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected); `start` again later."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # SIGTERM would wait for every client to leave
            self.process.wait(30)
        self.process = None
        self._log_file.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None
        self._log_file.close()

    def create_template(self) -> None:
        """A database with the whole schema, that each test's database is copied from."""
        from headwater.storage.postgres.core import migrate

        self.sql("postgres", f"CREATE DATABASE {TEMPLATE}")

        async def run() -> None:
            conn = await asyncpg.connect(self.url(TEMPLATE))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(run())

    def new_database(self, empty: bool = False) -> str:
        """A database of its own for a test: with the schema (made ahead, while the test before
        runs: a copy takes a third of a second), or `empty`."""
        if empty:
            return self._create("template0")
        name = (self._next or self._background().submit(self._create, TEMPLATE)).result()
        self._next = self._background().submit(self._create, TEMPLATE)
        return name

    def _background(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._ahead is None:
            self._ahead = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-databases")
        return self._ahead

    def _create(self, template: str) -> str:
        with self._lock:
            self._databases += 1
            name = f"test_{os.getpid()}_{self._databases}"
        self.sql("postgres", f"CREATE DATABASE {name} TEMPLATE {template}")
        return name

    def drop_database(self, name: str) -> None:
        """Dropped in the background, after the test's own connections are gone."""
        self._background().submit(self.sql, "postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A `redis-server` of its own, with the append-only file on (`appendfsync always`), as
    the README advises for a bus that must not lose a published entry."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="headwater-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server not found: install the Debian package redis-server (.ci/run does)")
        self.process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=self._log(),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server did not start:\n" + (self.dir / "server.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 30 s")

    def _log(self) -> BinaryIO:
        self._log_file = open(self.dir / "server.log", "ab")  # noqa: SIM115 - closed by stop
        return self._log_file

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None
        self._log_file.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[Postgres]:
    server = Postgres(durable).start()
    try:
        server.create_template()
        yield server
    finally:
        server.close()


@contextmanager
def redis_server() -> Iterator[Redis]:
    server = Redis().start()
    try:
        yield server
    finally:
        server.close()
