"""The `headwater` command: serve, keys, events. Every option also reads a HEADWATER_* variable."""

from __future__ import annotations

import asyncio
import atexit
import copy
import errno
import functools
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import fields, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from headwater.api.events import draft_from_line
from headwater.auth import ROLES, Principal
from headwater.cli_settings import CheckedGroup, FormType, Misconfigured
from headwater.config import (
    BUS_URL,
    LOG_LEVEL,
    PATH,
    PORT,
    STORE_URL,
    TEXT,
    Settings,
    choice,
    optional,
    variable,
    whole,
)
from headwater.events import Event
from headwater.keys import create_key
from headwater.metrics import MULTIPROCESS_DIR
from headwater.pipeline import Pipeline
from headwater.schemas import SchemaRegistry
from headwater.storage import open_store
from headwater.storage.base import Store, StoreError

T = TypeVar("T")
# How much lower than the API the worker that `serve` starts runs (see `serve`).
WORKER_NICE = 10
err = Console(stderr=True)
_encoder = msgspec.json.Encoder()


def store_options(command: Callable[..., T]) -> Callable[..., T]:
    """`--data-dir`, `--store` and `--bus`, handed to the command as one `settings`."""

    @functools.wraps(command)
    def with_settings(*args: Any, data_dir: Path, store: str | None, bus: str | None, **kwargs: Any) -> T:
        return command(*args, settings=replace(Settings(), data_dir=data_dir, store=store, bus=bus), **kwargs)

    options = [
        click.option(
            "--data-dir",
            envvar="HEADWATER_DATA_DIR",
            type=FormType(PATH),
            default=Path("./headwater-data"),
            show_default=True,
            help="Where the SQLite store lives (when there is no --store).",
        ),
        click.option(
            "--store",
            envvar="HEADWATER_STORE",
            type=FormType(optional(STORE_URL)),
            default=None,
            help="A PostgreSQL URL: the log and every table there instead of SQLite.",
        ),
        click.option(
            "--bus",
            envvar="HEADWATER_BUS",
            type=FormType(optional(BUS_URL)),
            default=None,
            help="A Redis URL: events reach the workers through Redis Streams.",
        ),
    ]
    return functools.reduce(lambda fn, option: option(fn), reversed(options), with_settings)


tenant_option = click.option(
    "--tenant", envvar="HEADWATER_TENANT", type=FormType(TEXT), default="default", show_default=True
)
mode_option = click.option(
    "--mode", envvar="HEADWATER_MODE", type=FormType(choice("live", "test")), default="live", show_default=True
)


@asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[Store]:
    store = open_store(settings)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def _nothing(store: Store) -> None:
    pass


def _run_with_store(settings: Settings, fn: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _opened(settings) as store:
            return await fn(store)

    try:
        return asyncio.run(main())
    except StoreError as exc:  # another partition count, an older schema, a server that is down
        raise Misconfigured([str(exc)]) from None


# Options without an explicit variable read HEADWATER_<COMMAND>_<OPTION>, e.g.
# HEADWATER_EVENTS_TAIL_COUNT; the common ones name theirs (HEADWATER_DATA_DIR, HEADWATER_PORT).
@click.group(cls=CheckedGroup, context_settings={"auto_envvar_prefix": "HEADWATER", "show_default": True})
@click.version_option(package_name="headwater")
def main() -> None:
    """Headwater: durable, multi-tenant event ingestion."""


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening before anything says so; uvicorn serves on it.
    Connections made before the app has started wait in the backlog."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Misconfigured([f"port {port} on {host} is in use"]) from None
        raise Misconfigured([f"cannot listen on {host} port {port}: {exc.strerror or exc}"]) from None
    return sock


def _logging(log_level: str, log_format: str) -> dict[str, Any]:
    """uvicorn's logging, plus Headwater's own loggers (the access log among them) at the same level;
    as JSON, every line of both is one JSON object."""
    from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["headwater"] = {"handlers": ["default"], "level": LOG_LEVELS[log_level], "propagate": False}
    if log_format == "json":
        config["formatters"]["default"] = {"()": "headwater.access_log.JsonFormatter"}
    # Neither format shows a line's process or thread, so a record need not look them up: the
    # access log's line per request made one getpid system call each.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    return config


def setting_option(name: str, help: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A flag for the `Settings` field `name`: `--<name>`, reading HEADWATER_<NAME>, of the field's
    form and default (so a flag, its variable and the setting can never disagree)."""
    declared = next(f for f in fields(Settings) if f.name == name)
    return click.option(
        "--" + name.replace("_", "-"),
        envvar=variable(name),
        type=FormType(declared.metadata["form"]),
        default=declared.metadata["default"],
        show_default=True,
        help=help,
    )


@main.command()
@click.option("--host", envvar="HEADWATER_HOST", type=FormType(TEXT), default="127.0.0.1", show_default=True)
@click.option("--port", envvar="HEADWATER_PORT", type=FormType(PORT), default=8000, show_default=True)
@store_options
@click.option(
    "--log-level",
    envvar="HEADWATER_LOG_LEVEL",
    type=FormType(LOG_LEVEL),
    default="warning",
    show_default=True,
    help="At info, debug or trace: a line per request too.",
)
@click.option(
    "--worker/--no-worker",
    envvar="HEADWATER_WORKER",
    default=True,
    show_default=True,
    help="Start one worker process beside the API (stopped with it); --no-worker runs the API alone.",
)
@click.option(
    "--processes",
    envvar="HEADWATER_API_PROCESSES",
    type=FormType(whole("processes", 2, high=64)),
    default=1,
    show_default=True,
    help="API processes on the one port (a server store only: SQLite serves from one process).",
)
@setting_option("log_format", "text: a line per request; json: one JSON object per line.")
@setting_option("header_timeout", "Seconds a client has to send a request's headers; then 408 and close.")
@setting_option("body_timeout", "Seconds a request body may stall between its bytes; then 408 and close.")
@setting_option("keep_alive_timeout", "Seconds an idle connection stays open between requests.")
def serve(
    host: str,
    port: int,
    settings: Settings,
    log_level: str,
    worker: bool,
    processes: int,
    log_format: str,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
) -> None:
    """Run the HTTP server (creates tenant `default` and an admin key on first start)."""
    import uvicorn

    from headwater.app import create_app
    from headwater.http_protocol import TimedHttpToolsProtocol, Timeouts
    from headwater.processes import Supervisor, serve_api
    from headwater.runtime import tune_gc
    from headwater.sealing import Sealer, SealError

    async def bootstrap(store: Store) -> str | None:
        # A key that does not open the stored secrets is one line here, not the app's traceback
        # at start (the app checks again, and warns when there is no key, once it runs).
        try:
            await store.registry.reseal_webhook_secrets(Sealer(settings.secret_key).reseal)
        except SealError as exc:
            raise Misconfigured([f"{exc}: start with the key they were sealed with"]) from None
        if await store.registry.count_tenants():
            return None
        created = await create_key(store, "default", "admin", "live", "bootstrap admin key")
        return created.key

    # Before anything counts: every process forked from here counts into this one directory.
    shared_metrics = None
    if not os.environ.get(MULTIPROCESS_DIR):
        shared_metrics = tempfile.mkdtemp(prefix="headwater-metrics-")
        os.environ[MULTIPROCESS_DIR] = shared_metrics
        atexit.register(shutil.rmtree, shared_metrics, ignore_errors=True)  # a one-line exit too
    if processes > 1 and settings.store is None:
        raise Misconfigured(
            [f"--processes {processes} needs a server store (--store postgresql://...): SQLite serves from one process"]
        )
    sock = _listen(host, port)
    key = _run_with_store(settings, bootstrap)
    address = f"[{host}]" if ":" in host else host
    url = f"http://{address}:{sock.getsockname()[1]}"
    if key is not None:
        click.echo("Created tenant 'default' with an admin key. It is shown only this once:")
        click.echo(f"  {key}")
        click.echo(f"Paste it into the web console to watch events arrive: {url}/")
    click.echo(f"Headwater listening on {url} ({settings.where()})", err=True)
    settings = replace(
        settings,
        log_format=log_format,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
    )
    protocol = TimedHttpToolsProtocol.with_timeouts(Timeouts(header_timeout, body_timeout, keep_alive_timeout))
    tune_gc()
    # The worker yields the CPU to the API when both want it: ingest keeps its rate under load,
    # and the worker catches up from the log as soon as there is room (`headwater worker`
    # processes of their own run at normal priority).
    workers = Supervisor(settings, 1, nice=WORKER_NICE) if worker else None
    if workers is not None:
        workers.start()

    def config() -> uvicorn.Config:
        return uvicorn.Config(
            create_app(settings),
            loop="uvloop",
            http=protocol,
            # Headwater's own access log (headwater.access_log) names the caller; uvicorn's cannot.
            access_log=False,
            log_level=log_level,
            log_config=_logging(log_level, log_format),
        )

    try:
        serve_api(config, sock, workers, processes)
    finally:
        if workers is not None:
            workers.stop()


@main.command()
@click.option(
    "--processes",
    type=FormType(whole("processes", 2, high=64)),
    default=1,
    show_default=True,
    help="Worker processes to run; they split the partitions between them (and with any other worker).",
)
@store_options
@click.option("--stop-with", type=FormType(whole("a process id", 1)), default=None, hidden=True)
def worker(processes: int, settings: Settings, stop_with: int | None) -> None:
    """Run the consumers: triggers, facts, webhook delivery and the catalog."""
    from headwater.processes import Supervisor, run_worker

    _run_with_store(settings, _nothing)  # opens (and upgrades) the store, or says in one line why not
    if processes == 1:
        run_worker(settings, stop_with)
        return
    workers = Supervisor(settings, processes)
    workers.start()
    workers.wait()


@main.command()
@store_options
def migrate(settings: Settings) -> None:
    """Bring the store's schema up to date (PostgreSQL; a SQLite data dir upgrades itself)."""
    from headwater.storage import migrate_store

    try:
        click.echo(asyncio.run(migrate_store(settings)))
    except StoreError as exc:
        raise Misconfigured([str(exc)]) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--url",
    type=FormType(TEXT),
    default=None,
    help="A running server (http://127.0.0.1:8000): its /metrics at a glance, before the table.",
)
@store_options
def status(as_json: bool, url: str | None, settings: Settings) -> None:
    """The log's head and, per consumer and partition, its checkpoint, lag and owner."""
    from headwater.processing.status import status as read_status

    if url is not None and as_json:
        raise Misconfigured(["--url sums /metrics up for people: a program reads the server's /metrics itself"])
    if url is not None:
        from headwater.glance import ScrapeError, lines, scrape

        try:
            scraped = scrape(url, settings.metrics_token)
        except ScrapeError as exc:
            raise Misconfigured([str(exc)]) from None
        for line in lines(scraped):
            click.echo(line)

    found = _run_with_store(settings, read_status)
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    table = Table("consumer", Column("partition", justify="right"), Column("checkpoint", justify="right"),
                  Column("lag", justify="right"), "owner")  # fmt: skip
    for c in found.consumers:
        partition = "all" if c.partition is None else str(c.partition)
        table.add_row(c.name, partition, f"{c.checkpoint:,}", f"{c.lag:,}", c.owner or "-")
    console = Console()
    console.print(f"log head: {found.head:,}; workers: {', '.join(found.workers) or 'none'}")
    console.print(table)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@tenant_option
@click.option("--role", envvar="HEADWATER_ROLE", type=FormType(choice(*ROLES)), required=True)
@mode_option
@click.option("--name", envvar="HEADWATER_KEY_NAME", default=None, help="A label for the key.")
@store_options
def keys_create(tenant: str, role: str, mode: str, name: str | None, settings: Settings) -> None:
    """Create a key (and the tenant, if new). The key is printed alone on the last line."""
    created = _run_with_store(settings, lambda s: create_key(s, tenant, role, mode, name))  # type: ignore[arg-type]
    click.echo(f"Created {created.role} key {created.id} for tenant {created.tenant!r} ({created.mode}).")
    click.echo("Store it now: it is not shown again.")
    click.echo(created.key)


@keys.command("list")
@tenant_option
@store_options
def keys_list(tenant: str, settings: Settings) -> None:
    """List a tenant's keys (prefixes only; keys are stored hashed)."""
    records = _run_with_store(settings, lambda s: s.registry.list_keys(tenant))
    table = Table("id", "prefix", "role", "mode", "name", "created", "revoked")
    for r in records:
        revoked = r.revoked_at.isoformat() if r.revoked_at else ""
        table.add_row(r.id, r.prefix, r.role, r.mode, r.name or "", r.created_at.isoformat(), revoked)
    # Never squeeze the table below its natural width: a truncated id cannot be passed to `keys revoke`.
    console = Console()
    natural = console.measure(table, options=console.options.update_width(1000)).maximum
    Console(width=max(console.width, natural)).print(table)


@keys.command("revoke")
@click.argument("key_id")
@tenant_option
@store_options
def keys_revoke(key_id: str, tenant: str, settings: Settings) -> None:
    """Revoke a key; running servers stop accepting it within a second."""
    from datetime import UTC, datetime

    done = _run_with_store(settings, lambda s: s.registry.revoke_key(tenant, key_id, datetime.now(UTC)))
    if not done:
        raise click.ClickException(f"no active key {key_id!r} in tenant {tenant!r}")
    click.echo(f"Revoked {key_id}.")


@main.group()
def events() -> None:
    """Follow, export and import events."""


def _in_scope(event: Event, tenant: str, mode: str) -> bool:
    return event.tenant == tenant and event.mode == mode


def _ndjson_line(event: Event) -> bytes:
    """The event as exactly one line of compact JSON.

    `data` is stored as the client sent it, and clients (and every vendor document's examples)
    send it pretty-printed over several lines: encoding it verbatim would split one event
    over many lines that are not JSON on their own.
    """
    return msgspec.json.format(_encoder.encode(event), indent=-1) + b"\n"


@events.command("tail")
@tenant_option
@mode_option
@click.option("--type", "types", multiple=True, help="Only these types (repeatable).")
@click.option("--from-start", is_flag=True, help="Print the existing events first.")
@click.option("--count", type=int, default=None, help="Stop after this many events.")
@click.option("--interval", type=float, default=0.2, show_default=True, help="Seconds between polls.")
@store_options
def events_tail(
    tenant: str,
    mode: str,
    types: tuple[str, ...],
    from_start: bool,
    count: int | None,
    interval: float,
    settings: Settings,
) -> None:
    """Print new events as NDJSON as they arrive (follows the log by offset)."""
    out = sys.stdout.buffer

    async def follow(store: Store) -> None:
        position = 0
        if not from_start:
            position = await _log_end(store)
        printed = 0
        while count is None or printed < count:
            batch = await store.log.read_log(position, 1000)
            for event in batch:
                position = event.seq or position
                if _in_scope(event, tenant, mode) and (not types or event.type in types):
                    out.write(_ndjson_line(event))
                    printed += 1
                    if count is not None and printed >= count:
                        break
            out.flush()
            if not batch:
                await asyncio.sleep(interval)

    with suppress(KeyboardInterrupt):
        _run_with_store(settings, follow)


async def _log_end(store: Store) -> int:
    position = 0
    while batch := await store.log.read_log(position, 10_000):
        position = batch[-1].seq or position
    return position


def _progress(**columns: Any) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *columns.values(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


@events.command("export")
@tenant_option
@mode_option
@click.option("--output", "-o", type=click.File("wb"), default="-", help="File to write (default stdout).")
@store_options
def events_export(tenant: str, mode: str, output: IO[bytes], settings: Settings) -> None:
    """Write a tenant's events as NDJSON, in log order."""

    async def export(store: Store) -> int:
        total = await _count(store, tenant, mode)
        written = 0
        position = 0
        with _progress() as progress:
            task = progress.add_task("exporting", total=total)
            while batch := await store.log.read_log(position, 5000):
                position = batch[-1].seq or position
                lines = [_ndjson_line(e) for e in batch if _in_scope(e, tenant, mode)]
                output.write(b"".join(lines))
                written += len(lines)
                progress.update(task, completed=written)
        return written

    written = _run_with_store(settings, export)
    output.flush()
    err.print(f"exported {written} events")


async def _count(store: Store, tenant: str, mode: str) -> int:
    position, total = 0, 0
    while batch := await store.log.read_log(position, 10_000):
        position = batch[-1].seq or position
        total += sum(1 for e in batch if _in_scope(e, tenant, mode))
    return total


def _chunks(stream: IO[bytes], size: int) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    """(line number, line) lists of up to `size` non-blank lines, with the bytes read."""
    chunk: list[tuple[int, bytes]] = []
    read = 0
    for number, line in enumerate(stream, start=1):
        read += len(line)
        if line.strip():
            chunk.append((number, line.strip()))
        if len(chunk) >= size:
            yield chunk, read
            chunk, read = [], 0
    if chunk or read:
        yield chunk, read


@events.command("import")
@click.argument("file", type=click.File("rb"))
@tenant_option
@mode_option
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@store_options
def events_import(file: IO[bytes], tenant: str, mode: str, batch_size: int, settings: Settings) -> None:
    """Load NDJSON events through the ingest pipeline (dedup applies)."""
    size = Path(file.name).stat().st_size if file.name not in ("<stdin>", "-") else None
    principal = Principal("cli", tenant, mode, "admin")  # type: ignore[arg-type]
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    problems: list[str] = []

    async def load(store: Store) -> None:
        await store.registry.ensure_tenant(tenant)
        pipeline = Pipeline(store, SchemaRegistry(store))
        with _progress(download=DownloadColumn()) as progress:
            task = progress.add_task("importing", total=size)
            for chunk, read in _chunks(file, batch_size):
                ingested = await pipeline.ingest(
                    principal, [draft_from_line(line) for _, line in chunk], dialect="import"
                )
                result = ingested.result
                totals["accepted"] += result.accepted
                totals["duplicates"] += result.duplicates
                totals["rejected"] += result.rejected
                for r in result.results:
                    if r.status == "rejected":
                        reasons = "; ".join(f"{e.field or 'line'}: {e.message}" for e in r.errors)
                        problems.append(f"line {chunk[r.index][0]}: {reasons}")
                progress.advance(task, read)

    started = time.monotonic()
    _run_with_store(settings, load)
    for problem in problems[:50]:
        err.print(f"rejected {problem}", markup=False)
    if len(problems) > 50:
        err.print(f"... and {len(problems) - 50} more rejected lines")
    elapsed = time.monotonic() - started
    click.echo(
        f"accepted {totals['accepted']}, duplicates {totals['duplicates']}, "
        f"rejected {totals['rejected']} in {elapsed:.1f}s"
    )
    if totals["rejected"]:
        sys.exit(1)


@main.command()
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True)
@store_options
def replay(batch_size: int, settings: Settings) -> None:
    """Rebuild gamification and trigger state from the log, then swap it in.

    Works while a server ingests on the same data dir: the rebuild catches up with the log,
    then replaces the derived tables in one transaction. The webhook outbox is kept.
    """
    from headwater.replay import Replay
    from headwater.storage.derived import RebuildBusy

    async def rebuild(store: Store) -> Any:
        with _progress(count=MofNCompleteColumn()) as progress:
            task = progress.add_task("replaying", total=None)
            return await Replay(store, settings, batch_size).run(
                lambda done, total: progress.update(task, completed=done, total=total)
            )

    started = time.monotonic()
    try:
        result = _run_with_store(settings, rebuild)
    except RebuildBusy as exc:
        raise click.ClickException(str(exc)) from None
    rows = ", ".join(f"{table} {count:,}" for table, count in result.rows.items())
    click.echo(
        f"replayed {result.events:,} events up to offset {result.position:,} in {time.monotonic() - started:.1f}s; "
        f"{result.appended:,} new award events; {rows}"
    )
