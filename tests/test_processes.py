"""The processes: `headwater status`, `headwater worker --processes N`, `serve` with and without
its worker, and the partition count a data dir is created with and keeps."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from headwater.storage.sqlite import open_sqlite_store
from tests.conftest import HEADWATER, ServerProcess, run_cli


def status(data_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return dict(json.loads(run_cli("status", "--json", "--data-dir", str(data_dir), env=env).stdout))


def wait_until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)
    return found


def test_status_of_a_new_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert status(data_dir) == {
        "head": 0,
        "consumers": [
            *({"name": "facts", "partition": p, "checkpoint": 0, "lag": 0, "owner": None} for p in range(8)),
            *({"name": "triggers", "partition": p, "checkpoint": 0, "lag": 0, "owner": None} for p in range(8)),
            {"name": "catalog", "partition": None, "checkpoint": 0, "lag": 0, "owner": None},
        ],
        "workers": [],
    }
    table = run_cli("status", "--data-dir", str(data_dir), env={"COLUMNS": "120"}).stdout
    assert table.splitlines()[0] == "log head: 0; workers: none"
    assert "│ facts    │         0 │          0 │   0 │ -     │" in table
    assert "│ catalog  │       all │          0 │   0 │ -     │" in table


def test_serve_runs_a_worker_and_no_worker_runs_none(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir)).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    alone = server_factory(data_dir, {"HEADWATER_SYNC_TIMEOUT": "1"}, args=("--no-worker",))
    alone.start()
    sent = httpx.post(alone.url + "/v1/events?wait=processed", json={"type": "a"}, headers=headers, timeout=10)
    assert (sent.status_code, sent.json()["error"]) == (503, "events are stored, but processing did not finish in time")
    backlog = status(data_dir)
    assert backlog["head"] == 1 and backlog["workers"] == []
    alone.stop()
    served = server_factory(data_dir)
    served.start()
    assert served.proc is not None
    worker = f"{socket.gethostname()}:"
    found = wait_until(lambda: (s := status(data_dir))["workers"] and s, 60)  # a loaded machine starts it late
    [owner] = found["workers"]
    assert owner.startswith(worker) and owner != f"{worker}{served.proc.pid}"  # a process of its own
    sent = httpx.post(served.url + "/v1/events?wait=processed", json={"type": "b"}, headers=headers, timeout=10)
    assert sent.status_code == 200
    assert all(c["owner"] == owner for c in status(data_dir)["consumers"])
    served.stop()  # and its worker with it
    wait_until(lambda: status(data_dir)["workers"] == [], 20)


def test_serve_stops_its_worker_on_a_signal_to_its_process_group(tmp_path: Path) -> None:
    """As systemd stops a service by default: SIGTERM to every process of the group at once. The
    worker (which runs at a lower priority than the API) is not started again while the server
    stops, and serve exits 0 once it has stopped."""
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    port = str(ServerProcess(data_dir).port)
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [*HEADWATER, "serve", "--port", port, "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        [owner] = wait_until(lambda: status(data_dir)["workers"], 30)
        worker_pid = int(owner.rsplit(":", 1)[1])
        # It yields the CPU to the API when both want it.
        assert os.getpriority(os.PRIO_PROCESS, worker_pid) == os.getpriority(os.PRIO_PROCESS, serve.pid) + 10
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{worker_pid}").exists(), 10)
    assert "starting it again" not in log.read_text()
    assert status(data_dir)["workers"] == []


def test_worker_processes_split_the_partitions(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_cli("status", "--data-dir", str(data_dir))  # creates it
    proc = subprocess.Popen([*HEADWATER, "worker", "--processes", "2", "--data-dir", str(data_dir)])

    def shares() -> list[int]:
        by_owner: dict[str, int] = {}
        for c in status(data_dir)["consumers"]:
            if c["name"] == "facts" and c["owner"] is not None:
                by_owner[c["owner"]] = by_owner.get(c["owner"], 0) + 1
        return sorted(by_owner.values())

    try:
        # The first worker up takes every partition, and hands half over once it sees the other.
        wait_until(lambda: shares() == [4, 4], 30)
        assert len(status(data_dir)["workers"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)
    assert status(data_dir)["workers"] == []


def test_a_data_dir_keeps_its_partition_count(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    four = status(data_dir, {"HEADWATER_PARTITIONS": "4"})
    assert [c["partition"] for c in four["consumers"] if c["name"] == "facts"] == [0, 1, 2, 3]
    assert len(status(data_dir)["consumers"]) == 9  # unset: the count it was created with
    refused = run_cli("status", "--data-dir", str(data_dir), env={"HEADWATER_PARTITIONS": "8"}, check=False)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "headwater: HEADWATER_PARTITIONS=8 does not match this data dir, created with 4 partitions: the count"
        " cannot change (leave it unset, or set it to 4)\n"
    )
    bad = run_cli("status", "--data-dir", str(data_dir), env={"HEADWATER_PARTITIONS": "0"}, check=False)
    assert (bad.returncode, bad.stderr) == (
        2,
        "headwater: HEADWATER_PARTITIONS='0' is not valid: expected a whole number of partitions (from 1 to 256),"
        " e.g. 8, or nothing\n",
    )


def _open_at_once(data_dir: str, barrier: Any) -> None:
    async def run() -> None:
        store = open_sqlite_store(Path(data_dir))
        await store.start()
        await store.close()

    barrier.wait(10)
    asyncio.run(run())


def test_processes_opening_a_new_data_dir_at_once_all_open_it(tmp_path: Path) -> None:
    """Workers started together on a new data dir each create its files: none may fail for
    finding another's lock on a file that is still being set up."""
    context = multiprocessing.get_context("spawn")
    for attempt in range(5):
        data_dir = tmp_path / f"data-{attempt}"
        barrier = context.Barrier(4)
        procs = [context.Process(target=_open_at_once, args=(str(data_dir), barrier)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
