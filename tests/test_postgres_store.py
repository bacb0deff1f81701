"""What only the PostgreSQL store has: a versioned schema (`headwater migrate`, and a refusal to
start on another version), many API processes on one port, and a server that is down at start.
The behaviour every backend shares runs through the `backend` fixture of the whole suite."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from headwater.storage.base import IncompatibleStore
from headwater.storage.postgres.core import PgCore, migrate_database
from headwater.storage.postgres.schema import MIGRATIONS
from tests.conftest import ServerProcess, free_port, run_cli
from tests.servers import Postgres

# A later Headwater's schema: today's plus one more version.
LATER = [*MIGRATIONS, (MIGRATIONS[-1][0] + 1, ["CREATE TABLE later_feature (id bigint PRIMARY KEY)"])]
NOW = MIGRATIONS[-1][0]


@pytest.fixture
def database(postgres: Postgres) -> str:
    name = postgres.new_database(empty=True)
    yield postgres.url(name)  # type: ignore[misc]
    postgres.drop_database(name)


def test_migrate_creates_the_schema_of_an_empty_database_and_then_has_nothing_to_do(database: str) -> None:
    first = run_cli("migrate", "--store", database)
    assert first.stdout == f"migrated the database from schema version 0 to {NOW}\n"
    again = run_cli("migrate", "--store", database)
    assert again.stdout == f"the database is up to date (schema version {NOW})\n"


def test_a_database_of_an_older_schema_is_refused_until_migrated_and_a_newer_one_always(database: str) -> None:
    async def run() -> None:
        assert await migrate_database(database) == (0, NOW)
        later = PgCore(database, migrations=LATER)
        with pytest.raises(IncompatibleStore) as older:
            await later.start()
        assert str(older.value) == (
            f"this database's schema is version {NOW}, older than this Headwater's ({NOW + 1}):"
            " run `headwater migrate` to bring it up to date"
        )
        assert await migrate_database(database, LATER) == (NOW, NOW + 1)
        await later.start()
        await later.close()

    asyncio.run(run())
    # Today's Headwater on the later schema: refused, by every command, in one line.
    newer = (
        f"headwater: this database's schema is version {NOW + 1}, newer than this Headwater's ({NOW}):"
        " run the Headwater release that migrated it, or a newer one\n"
    )
    for command in (("status",), ("migrate",), ("keys", "list", "--tenant", "t")):
        refused = run_cli(*command, "--store", database, check=False)
        assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", newer), command


def test_a_database_with_tables_of_another_program_is_refused(postgres: Postgres, database: str) -> None:
    postgres.sql(database.rsplit("/", 1)[1], "CREATE TABLE orders (id int)")
    refused = run_cli("status", "--store", database, check=False)
    assert (refused.returncode, refused.stderr) == (
        2,
        "headwater: this database holds tables that are not Headwater's (it has no schema_version table):"
        " give Headwater a database of its own\n",
    )


def test_a_server_that_is_down_at_start_is_one_line() -> None:
    port = free_port()  # nothing listens there
    refused = run_cli("status", "--store", f"postgresql://headwater@127.0.0.1:{port}/headwater", check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("headwater: PostgreSQL is unavailable: ")
    assert refused.stderr.count("\n") == 1


def test_several_api_processes_are_refused_on_sqlite(tmp_path: Path) -> None:
    refused = run_cli("serve", "--processes", "2", "--data-dir", str(tmp_path / "data"), check=False)
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        2,
        "",
        "headwater: --processes 2 needs a server store (--store postgresql://...): SQLite serves from one process\n",
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_serve_runs_several_api_processes_on_one_port(
    server_factory: type[ServerProcess], database: str, tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", {"HEADWATER_STORE": database}, args=("--processes", "3", "--no-worker"))
    server.start()
    assert server.proc is not None
    forked = _children(server.proc.pid)
    assert len(forked) == 2  # the two API processes beside the first (no worker: --no-worker)
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--store", database).stdout.split()[-1]
    # A connection per request, so that the kernel hands them to every process in turn.
    for i in range(60):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            assert client.post("/v1/events", json={"type": "buy", "subject": f"s{i}"}).status_code == 200
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
        assert len(client.get("/v1/events", params={"limit": 1000}).json()["data"]) == 60
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert [pid for pid in forked if Path(f"/proc/{pid}").exists()] == []  # stopped with it
