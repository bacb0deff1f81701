"""One SQLite file in WAL mode: one writer thread with group commit, and reader threads.

Requests put write jobs on a bounded queue, a lane per tenant (`headwater.storage.lanes`).
The writer takes what is pending (from each lane in turn, up to `max_group` events), runs it
in one transaction, commits (one fsync with synchronous=FULL), and only then resolves
every waiting request. Readers use their own connections on a small thread pool, so
queries never wait behind the writer.

Several processes may write the same file (the API and the workers). SQLite lets one
writer in at a time and makes the others retry by sleeping (1, 2, 5, ... up to 100 ms),
which would put those sleeps into the ingest path. So every writer first takes an
exclusive `flock` on a lock file beside the database: the kernel queues the waiters and
wakes the next one the moment the lock is released, and SQLite's own lock is then free.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from headwater.metrics import metrics
from headwater.storage.base import Backpressure, StorageFull, StoreError
from headwater.storage.lanes import Lanes

T = TypeVar("T")
WRITER_CACHE_KIB = 64 * 1024
CONTENDED_PAUSE = 0.001


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause of the `(condition, value)` pairs whose value is not None, ANDed, with
    its arguments: how every list query applies its optional filters."""
    kept = [(condition, value) for condition, value in conditions if value is not None]
    return " AND ".join(c for c, _ in kept), [v for _, v in kept]


class Transaction:
    """What a write job sees: the writer's connection inside the group's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._last_seq: int | None = None
        # Keys appended earlier in this same transaction, which the index lookup would
        # also find; kept here to skip the query for repeats within one group.
        self.new_keys: dict[tuple[str, str, str], tuple[str, int, int]] = {}

    def next_seq(self) -> int:
        """The next log offset. Offsets are in commit order because the writer holds the
        file's write lock from here to its commit: no other process can commit in between."""
        if self._last_seq is None:
            # Past the newest offset an erasure deleted too (see `sqlite.protection`).
            row = self.conn.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM events), 0),"
                " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE name = 'erased_head'), 0))"
            ).fetchone()
            self._last_seq = int(row[0])
        self._last_seq += 1
        return self._last_seq


class _Job:
    __slots__ = ("error", "fn", "future", "loop", "result", "size")

    def __init__(
        self,
        fn: Callable[[Transaction], Any],
        size: int,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.size = size
        self.loop = loop
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


# Result codes that mean the database itself failed (the disk, a full file, a lock), not the job.
_STORE_FAILURES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)


def _job_error(exc: Exception) -> BaseException:
    """What a failed job's waiter gets: a `StoreError` when the database failed under it, as
    for a failed commit, so that callers retry rather than blame the job (a consumer skips an
    event whose effects keep failing; it must never skip one because the disk did)."""
    if isinstance(exc, sqlite3.Error) and (exc.sqlite_errorcode or 0) & 0xFF in _STORE_FAILURES:
        return _store_error(exc)
    return exc


def _store_error(exc: sqlite3.Error) -> StoreError:
    """A full disk (or file size limit) is its own error: the API answers 507, not 503."""
    full = (exc.sqlite_errorcode or 0) & 0xFF == sqlite3.SQLITE_FULL
    return (StorageFull if full else StoreError)(f"write failed: {exc}")


def _settle(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():  # the waiter went away (client disconnected)
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


class SqliteCore:
    """The connection machinery every SQLite table group shares: the writer and the readers.

    Subclasses add their tables by defining a `SCHEMA` script, and their methods on top
    of `write` (inside the group transaction) and `read` (on a reader connection).
    """

    SCHEMA = ""

    # The log's writer is what the write-queue and group-commit metrics describe.
    METERED = False

    def __init__(
        self,
        path: Path,
        *,
        queue_max_events: int = 200_000,
        reader_threads: int = 4,
        busy_timeout_ms: int = 10_000,
        synchronous: str = "FULL",
        max_group: int | None = None,
        cache_kib: int = WRITER_CACHE_KIB,
        readers: ThreadPoolExecutor | None = None,
    ) -> None:
        self.path = path
        self.queue_max_events = queue_max_events
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.max_group = max_group
        self._lock_fd: int | None = None
        self._jobs: Lanes[_Job] = Lanes(queue_max_events)
        self._cond = threading.Condition()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._writer_error: BaseException | None = None
        # Stores of many files (a partition each) share one pool of reader threads.
        self._own_readers = readers is None
        self._readers = readers or ThreadPoolExecutor(reader_threads, thread_name_prefix="headwater-read")
        self.cache_kib = cache_kib
        self._reader_conns: list[sqlite3.Connection] = []
        self._local = threading.local()

    # Lifecycle

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """The cross-process writer lock (see the module's docstring), as this store's writer
        holds it."""
        assert self._lock_fd is not None, "the store is not started"
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            contended = False
        except BlockingIOError:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            contended = True
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            if contended:
                # The kernel does not queue flock's waiters: a writer with its next transaction
                # ready would take the lock straight back, and another process's writer could
                # wait for a long while. Having waited itself, this one steps aside a moment.
                time.sleep(CONTENDED_PAUSE)

    @contextlib.contextmanager
    def other_writer(self) -> Iterator[None]:
        """The same lock for a writer on a connection of its own (a replay's swap): through a
        file description of its own, so that it excludes this process's writer too."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        conn = self._connect()
        # The writer's page cache (SQLite's default is 2 MiB): the consumers update rows all over
        # their tables, and a page read again from the OS costs more than the update itself
        # (bench/gamification.py: progress writes 1.45 s -> 0.90 s per 100k events).
        conn.execute(f"PRAGMA cache_size = -{self.cache_kib}")
        # Each class in the store's hierarchy brings the tables it works on; `upgrade` may
        # first change what an older version left.
        with self.write_lock():
            # Under the lock: on a new file, two processes starting at once would otherwise both
            # try to switch it to WAL, and the one that finds the other's lock fails at once.
            conn.execute("PRAGMA journal_mode = WAL")
            self.upgrade(conn)
            for cls in reversed(type(self).__mro__):
                if "SCHEMA" in cls.__dict__:
                    conn.executescript(cls.__dict__["SCHEMA"])
            self.prepare(conn)
        self._writer_conn = conn
        self._writer = threading.Thread(target=self._write_loop, name="headwater-writer", daemon=True)
        self._writer.start()

    def upgrade(self, conn: sqlite3.Connection) -> None:
        """Before the schema, under the write lock: change what an older version left."""

    def prepare(self, conn: sqlite3.Connection) -> None:
        """After the schema, under the write lock: what a subclass sets up once."""

    async def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        if self._own_readers:
            self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # The writer

    async def write(
        self, fn: Callable[[Transaction], T], size: int = 1, first: bool = False, lane: Hashable = None
    ) -> T:
        """Run `fn` inside the next group transaction; return once it is committed. `first`
        puts a small job ahead of those waiting (a worker's lease renewal must not wait behind
        the batches of every partition); `lane` is whose job it is (a tenant's appends)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, size, loop, future)
        with self._cond:
            if self._stopping or self._writer is None:
                raise StoreError("store is closed")
            if not self._jobs.admits(lane, size):
                raise Backpressure(retry_after=1)
            self._jobs.put(lane, job, size, first)
            if self.METERED:
                metrics().queued(self._jobs.pending)
            self._cond.notify()
        return await future

    def _write_loop(self) -> None:
        conn = self._writer_conn
        assert conn is not None
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs and self._stopping:
                    return
                jobs = self._next_group()
                if self.METERED:
                    metrics().queued(self._jobs.pending)
            started = time.perf_counter()
            self._run_group(conn, jobs)
            if self.METERED:
                metrics().group(sum(job.size for job in jobs), started)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
            for job in jobs:
                by_loop.setdefault(job.loop, []).append(job)
            for loop, loop_jobs in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody is waiting
                    loop.call_soon_threadsafe(_settle, loop_jobs)

    def _next_group(self) -> list[_Job]:
        """The jobs of the next transaction: all that wait, or up to `max_group` of their size
        (always at least one), so that one transaction never holds the write lock for long."""
        return self._jobs.take(self.max_group)

    @staticmethod
    def _run_isolated(conn: sqlite3.Connection, tx: Transaction, job: _Job) -> None:
        """A savepoint per job in a group: one failing job rolls back alone."""
        conn.execute("SAVEPOINT job")
        try:
            job.result = job.fn(tx)
        except Exception as exc:
            if not conn.in_transaction:
                # SQLite rolled the whole group back itself (a full disk, an I/O error): every
                # job of the group fails with the store's error.
                raise exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(str(exc)) from exc
            conn.execute("ROLLBACK TO job")
            # Keys and offsets the failed job took are gone with it: the rest are still found
            # by query, and the next job's offsets follow on from the last one kept, no gap.
            tx.new_keys.clear()
            tx._last_seq = None
            job.error = _job_error(exc)
        conn.execute("RELEASE job")

    def _run_group(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        with self.write_lock():
            self._run_locked(conn, jobs)

    def _run_locked(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            tx = Transaction(conn)
            if len(jobs) == 1:
                # Alone in its transaction, a job needs no savepoint: a failure rolls back all.
                try:
                    jobs[0].result = jobs[0].fn(tx)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                    if conn.in_transaction:  # else SQLite rolled back already (a full disk, say)
                        conn.execute("ROLLBACK")
                    jobs[0].error = _job_error(exc)
                    return
            else:
                for job in jobs:
                    self._run_isolated(conn, tx, job)
            conn.execute("COMMIT")
            self._writer_error = None
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._writer_error = exc
            for job in jobs:
                job.result = None
                job.error = _store_error(exc)

    # Readers

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    async def read_on_writer(self, fn: Callable[[sqlite3.Connection], T], size: int = 1) -> T:
        """A read on the writer's connection, in its turn: its page cache is the one that stays
        warm (a reader connection's is dropped whenever the file was written since it last
        read), so a consumer reads the state it is about to change here."""
        return await self.write(lambda tx: fn(tx.conn), size)

    async def ping(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            raise StoreError("writer is not running")
        if self._writer_error is not None:
            raise StoreError(f"last write failed: {self._writer_error}")
        await self.write(lambda tx: tx.conn.execute("SELECT 1").fetchone())
