"""Shared fixtures. `backend` is the one parametrized fixture every API test runs through:
it builds the store the test runs on (its settings), and adding a backend to its params runs
the whole suite against that one too.

The `api` fixture is the app in a test client plus a worker (`processing.worker.Worker`) on
a thread of its own, with its own event loop and its own store objects, as a worker process
beside the API would be: the API waits for it through the store, as it waits for a worker
process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import redis as redis_client
from starlette.testclient import TestClient

import headwater.bus.redis as bus_redis
from headwater.app import create_app
from headwater.config import Settings
from headwater.keys import create_key
from headwater.partitions import DEFAULT_PARTITIONS
from headwater.processing.consumer import ENGINES, Engine
from headwater.processing.worker import Worker
from headwater.storage import open_store
from tests.servers import Postgres, Redis, postgres_server, redis_server

ROOT = Path(__file__).resolve().parent.parent
HEADWATER = [sys.executable, "-m", "headwater"]


@dataclass
class Backend:
    name: str
    settings: Settings


# Every backend set-up the suite runs on; HEADWATER_TEST_BACKENDS=sqlite (say) runs fewer. Taken
# out of the environment, as the commands the tests run would warn that nothing reads it, and
# kept under another name for pytest-xdist's worker processes, which start after this runs.
BACKENDS = ("sqlite", "postgres", "postgres+redis")
ASKED = os.environ.pop("HEADWATER_TEST_BACKENDS", None) or os.environ.get("TESTS_ASKED_BACKENDS")
if ASKED is not None:
    os.environ["TESTS_ASKED_BACKENDS"] = ASKED
SELECTED = tuple((ASKED or ",".join(BACKENDS)).split(","))
# Unless asked for by name, postgres+redis runs where the bus changes what happens (ingest
# answers, processing, waiting): the whole suite on three set-ups takes about 30 minutes on
# two cores. HEADWATER_TEST_BACKENDS=postgres+redis runs all of it there.
BUS_PATHS = (
    "tests/dialects/", "tests/processing/", "tests/test_events_api.py", "tests/test_bus.py",
    # What a crash, a full disk or a race of one key does to what the bus carries.
    "tests/test_crash_ledger.py", "tests/test_storage_full.py", "tests/test_idempotency_machine.py",
)  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ASKED is not None:
        return
    kept, left = [], []
    for item in items:
        bus_case = "[postgres+redis" in item.nodeid and "backend" in getattr(item, "fixturenames", ())
        (left if bus_case and not item.nodeid.startswith(BUS_PATHS) else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    with redis_server() as server:
        yield server


def flush(server: Redis) -> None:
    """Empty the server's database."""
    with redis_client.Redis.from_url(server.url) as client:
        client.flushdb()


@pytest.fixture(params=SELECTED)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite needs nothing but a data dir. PostgreSQL: a database of the test's own, copied
    from one with the schema, on the session's server; with Redis, the session's Redis server,
    emptied first."""
    settings = replace(Settings(), data_dir=tmp_path / "data")
    if request.param == "sqlite":
        yield Backend("sqlite", settings)
        return
    server: Postgres = request.getfixturevalue("postgres")
    database = server.new_database()
    settings = replace(settings, store=server.url(database))
    if request.param == "postgres+redis":
        bus: Redis = request.getfixturevalue("redis")
        flush(bus)  # the streams of the tests before are not this test's
        settings = replace(settings, bus=bus.url)
    try:
        yield Backend(str(request.param), settings)
    finally:
        server.drop_database(database)


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend.settings


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """A data dir's settings and no server: for a test of what only SQLite has (its files)."""
    return replace(Settings(), data_dir=tmp_path / "data")


def server_args(settings: Settings) -> list[str]:
    """The command line's `--store` and `--bus` for the settings' servers (none on SQLite)."""
    return [arg for flag, url in (("--store", settings.store), ("--bus", settings.bus)) if url for arg in (flag, url)]


def store_args(settings: Settings) -> list[str]:
    """What a command needs to open the settings' store: the data dir and the servers."""
    return ["--data-dir", str(settings.data_dir), *server_args(settings)]


# A consumer group of the tests' own on every stream that reads nothing: catch-up trims no entry
# that a group has not received, so every entry the bus carried stays to be looked at.
WATCHER = "tests"


class Carried:
    """What the bus carried (Redis's streams, read with XRANGE): the entry of each event."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.bus
        self.partitions = settings.partitions or DEFAULT_PARTITIONS

    @property
    def bus(self) -> bool:
        return self.url is not None

    def watch(self) -> None:
        assert self.url is not None
        with redis_client.Redis.from_url(self.url) as client:
            for p in range(self.partitions):
                client.xgroup_create(f"headwater:events:{p}", WATCHER, id="0", mkstream=True)

    def entries(self) -> list[tuple[str, str]]:
        """(entry id, event id) of every entry, stream by stream."""
        assert self.url is not None
        with redis_client.Redis.from_url(self.url, decode_responses=True) as client:
            return [
                (entry_id, fields["id"])
                for p in range(self.partitions)
                for entry_id, fields in client.xrange(f"headwater:events:{p}")
            ]

    def entry_id(self, event_id: str) -> str:
        """The id of the event's one entry."""
        [found] = [entry_id for entry_id, carried in self.entries() if carried == event_id]
        return found

    def event_id(self, entry_id: str) -> str:
        """The id of the event the entry carries."""
        [found] = [event_id for carried, event_id in self.entries() if carried == entry_id]
        return found


@pytest.fixture
def carried(settings: Settings) -> Carried:
    """The bus's entries of the test's events; with a bus, none is trimmed while the test runs."""
    found = Carried(settings)
    if found.bus:
        found.watch()
    return found


class WorkerThread:
    """A worker on a thread of its own, started and stopped around a block."""

    def __init__(self, settings: Settings, engines: Sequence[Engine] = ENGINES) -> None:
        self.settings = settings
        self.engines = engines
        self.worker: Worker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-worker", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.worker = Worker(self.settings, engines=self.engines)
            started = asyncio.create_task(self.worker.run(self._stop))
            await self.worker.started.wait()
            self._ready.set()
            await started

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            assert self._loop is not None
            stuck = "\n".join(repr(task) for task in asyncio.all_tasks(self._loop))
            raise TimeoutError(f"the worker did not stop within 30 s; its tasks:\n{stuck}")


def make_key(settings: Settings, tenant: str, role: str = "admin", mode: str = "live") -> str:
    """Create a key straight in the store, as `headwater keys create` does."""

    async def run() -> str:
        store = open_store(settings)
        await store.start()
        try:
            return (await create_key(store, tenant, role, mode)).key  # type: ignore[arg-type]
        finally:
            await store.close()

    return asyncio.run(run())


@dataclass
class Api:
    """A test client plus a key maker for the same data dir."""

    client: TestClient
    settings: Settings

    def key(self, tenant: str = "acme", role: str = "admin", mode: str = "live") -> str:
        return make_key(self.settings, tenant, role, mode)

    def as_(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with WorkerThread(settings), TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PATIENT_SYNC_TIMEOUT = "60"


class ServerProcess:
    """`headwater serve` as a real subprocess on a free port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A first event waits for the worker process to start: under the suite's load (four
        # test processes on two cores) that outlived the default 10 s. A test of the timeout
        # itself sets its own.
        self.env = {**os.environ, "HEADWATER_SYNC_TIMEOUT": PATIENT_SYNC_TIMEOUT, **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = b""

    def start(self, timeout: float = 20) -> None:
        cmd = [*HEADWATER, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        # One client for every poll: `httpx.get` makes one each time, and loading its TLS
        # certificates costs 35 ms of CPU, more than the server's own start on a busy machine.
        with httpx.Client(timeout=0.5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.proc.stdout.read() if self.proc.stdout else b''!r}")
                try:
                    if client.get(self.url + "/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    time.sleep(0.05)
        raise TimeoutError("server did not become healthy")

    def drain(self) -> list[bytes]:
        """Read what the server and its worker print as they go (a test that makes them log a
        lot, faults say, must not let the pipe fill and block them); the lines so far."""
        assert self.proc is not None and self.proc.stdout is not None
        lines: list[bytes] = []
        stdout = self.proc.stdout

        def read() -> None:
            with contextlib.suppress(ValueError, OSError):  # closed by kill or stop
                lines.extend(iter(stdout.readline, b""))

        threading.Thread(target=read, daemon=True).start()
        return lines

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush; what is on disk is all that survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerProcess:
    """`headwater worker` as a real subprocess; its output goes to a file beside the data dir
    (a pipe nobody reads would stall it once full)."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"worker-{id(self)}.log"

    def start(self) -> WorkerProcess:
        with self.log.open("wb") as out:
            cmd = [*HEADWATER, "worker", "--data-dir", str(self.data_dir)]
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def owner(self) -> str:
        assert self.proc is not None
        return f"{socket.gethostname()}:{self.proc.pid}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker_factory() -> Iterator[type[WorkerProcess]]:
    started: list[WorkerProcess] = []

    class Tracked(WorkerProcess):
        def start(self) -> WorkerProcess:
            started.append(self)
            return super().start()

    yield Tracked
    for worker in started:
        worker.kill()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def start(self, timeout: float = 20) -> None:
            started.append(self)
            super().start(timeout)

    yield Tracked
    for server in started:
        server.kill()


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*HEADWATER, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"headwater {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(autouse=True)
def patient_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish that outlives its 0.15 s is answered with a null stream id and left to the
    catch-up. That is correct, and the tests of Redis down say so (a stopped Redis refuses at
    once, so they are unaffected), but on a loaded machine it makes every test that compares
    stream ids or entries a matter of luck (CI: `streamId` null in seed 003's documented
    example): in this process's apps a publish has 10 s. Every other command has 10 s too
    (CI: a connect under load outlived the 1 s of COMMAND_TIMEOUT and failed a trim test)."""
    monkeypatch.setattr(bus_redis, "PUBLISH_TIMEOUT", 10.0)
    monkeypatch.setattr(bus_redis, "COMMAND_TIMEOUT", 10.0)
