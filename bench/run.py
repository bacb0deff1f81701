"""Headwater benchmark: figures side by side in one run, as ratios against ceilings.

    .venv/bin/python bench/run.py            # full run, about 3 minutes
    .venv/bin/python bench/run.py --quick    # shorter phases, 1 latency round, for a smoke check

Everything runs on 127.0.0.1. Each server is a subprocess on a fresh temp dir and is killed
when its phases end, on error and on Ctrl-C. Exits 0 when targets are missed (this is a
report), non-zero only when a phase could not run. See bench/README.md for the phases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workload import BATCH_SIZE, BATCH_SUBJECTS, batch_body, single_body

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
# Same settings for every server: Headwater's `serve` runs uvicorn like this internally.
UVICORN_FLAGS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--workers",
    "1",
    "--log-level",
    "warning",
]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SINGLE_CONNECTIONS = 32
BATCH_CONNECTIONS = 4
STOP_SECONDS = 30.0  # serve gives its worker up to 20 s to stop
SLOW_STOP_SECONDS = 5.0


class PhaseError(Exception):
    """A phase could not produce a figure (server did not start, tool missing, ...)."""


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_post(url: str, body: bytes, key: str) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [0] state, [1] ppid, [11] utime, [12] stime,
    [13] cutime, [14] cstime, [19] starttime. None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, list[str]]:
    """Every live process below `root` (children, theirs, ...), with its stat fields."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := stat_fields(entry.name)) is not None:
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, list[str]] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = stats[child]
            todo.append(child)
    return found


def ticks(fields: list[str], *at: int) -> float:
    return sum(int(fields[i]) for i in at) / CLOCK_TICKS


@dataclass
class Server:
    """One server subprocess in its own process group: SIGTERM to it, and if it hangs, SIGKILL
    to the group, so nothing it started outlives the run."""

    name: str
    argv: list[str]
    log: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    workers: bool = False  # `headwater serve` with its worker child: its CPU is reported apart
    process: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)  # how stopping went, when it went wrong

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PhaseError(f"{self.name} exited with {self.process.returncode}:\n{tail(self.log)}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise PhaseError(f"{self.name} not healthy after {timeout:.0f}s:\n{tail(self.log)}")

    def cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU so far, all threads included: (the server process, every process
        below it). The second counts live children and, through the server's cutime/cstime,
        children that have exited, so a worker restarted mid-phase is still billed."""
        assert self.process is not None
        own = stat_fields(self.process.pid)
        if own is None:
            raise PhaseError(f"{self.name} is gone (pid {self.process.pid})")
        below = ticks(own, 13, 14) + sum(ticks(f, 11, 12, 13, 14) for f in descendants(self.process.pid).values())
        return ticks(own, 11, 12), below

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            raise PhaseError(f"{self.name} died (exit {code}):\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Who was below the server, so we can tell whether they went with it (pid + start time,
        # since a pid can be reused).
        children = {pid: fields[19] for pid, fields in descendants(self.process.pid).items()}
        pgid = self.process.pid  # start_new_session made it the group leader
        started = time.monotonic()
        # SIGTERM to the server alone: stopping its worker is its own job (checked below). A
        # SIGTERM to the whole group reaches the worker first, and serve then restarts it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{self.name} ignored SIGTERM for {STOP_SECONDS:.0f}s; killed")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
        stopped = time.monotonic() - started
        if stopped > SLOW_STOP_SECONDS:
            self.notes.append(f"{self.name} took {stopped:.1f}s to stop after SIGTERM")
        self.reap_children(children)

    def reap_children(self, children: dict[int, str], timeout: float = 10.0) -> None:
        """A child still running after the server exited is a bug to report (and to stop)."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [
                pid
                for pid, start in children.items()
                if (f := stat_fields(pid)) is not None and f[19] == start and f[0] != "Z"
            ]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for pid in alive:
            self.notes.append(f"{self.name}: child process {pid} still running {timeout:.0f}s after the server exited")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


def headwater_command() -> list[str]:
    executable = Path(PYTHON).parent / "headwater"
    if not executable.exists():
        raise PhaseError(f"{executable} not found (is headwater installed? run `make bench`)")
    return [str(executable)]


def create_key(command: list[str], where: list[str], role: str = "ingest") -> str:
    """A key of the store `where` names (`--data-dir DIR`, or `--store URL`)."""
    argv = [*command, "keys", "create", "--tenant", "bench", "--role", role, *where]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise PhaseError(f"`{' '.join(argv)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return lines[-1]


def worker_lag(command: list[str], where: list[str]) -> int:
    """Events the consumers have still to process, over every consumer and partition, of the
    store `where` names (`--data-dir DIR`, or `--store URL`)."""
    argv = [*command, "status", "--json", *where]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PhaseError(f"`{' '.join(argv)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return sum(int(c["lag"]) for c in json.loads(done.stdout)["consumers"])


def catch_up(command: list[str], where: list[str], timeout: float) -> dict[str, float | None]:
    """The worker's lag when the load stops, and how long it then takes to reach the head:
    a worker that keeps the ingest rate up by falling behind shows here."""
    started = time.monotonic()
    lag = worker_lag(command, where)
    left = lag
    while left and time.monotonic() - started < timeout:
        time.sleep(0.5)
        left = worker_lag(command, where)
    return {"lag_at_end": lag, "caught_up_s": None if left else time.monotonic() - started, "lag_left": left}


def check_contract(url: str, body: bytes, key: str, expected: int) -> None:
    """One request before the load, so a contract mismatch is reported, not benchmarked."""
    status, response = http_post(url, body, key)
    if status != 200:
        raise PhaseError(f"POST {url} answered {status}: {response[:500]!r}")
    accepted = json.loads(response).get("accepted")
    if accepted != expected:
        raise PhaseError(f"POST {url} accepted {accepted}, expected {expected}: {response[:500]!r}")


# --- load generators ----------------------------------------------------------------------


@dataclass
class Load:
    """One measured load run. Latencies in milliseconds."""

    seconds: float
    requests: int
    ok: int
    accepted: int
    busy_503: int
    other_status: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_s: float | None = None  # the server and every process below it
    worker_cpu_s: float | None = None  # of that, the worker child's (serve with a worker only)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def cpu_us_per_event(self) -> float | None:
        """Server CPU per accepted event: less swayed by other load than a rate is."""
        if self.server_cpu_s is None or not self.accepted:
            return None
        return self.server_cpu_s / self.accepted * 1e6

    @property
    def failures(self) -> int:
        return self.busy_503 + self.other_status + self.socket_errors


def wrk(url: str, body_file: Path, key: str, connections: int, seconds: int) -> Load:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "post.lua"),
        url,
    ]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_KEY": key}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False)
    except FileNotFoundError as exc:
        raise PhaseError("wrk not found: apt-get install -y wrk") from exc
    marker = "BENCH_JSON "
    line = next((x for x in done.stdout.splitlines() if x.startswith(marker)), None)
    if done.returncode != 0 or line is None:
        raise PhaseError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    r = json.loads(line[len(marker) :])
    return Load(
        seconds=r["duration_us"] / 1e6,
        requests=r["requests"],
        ok=r["ok"],
        accepted=r["accepted"],
        busy_503=r["busy_503"],
        other_status=r["other_status"],
        socket_errors=r["socket_errors"] + r["timeouts"],
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
    )


def openloop(url: str, body_file: Path, key: str, rate: float, seconds: int, warmup: int) -> Load:
    argv = [
        PYTHON,
        str(BENCH_DIR / "openloop.py"),
        "--url",
        url,
        "--rate",
        f"{rate:.0f}",
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--body-file",
        str(body_file),
        "--key",
        key,
        "--connections",
        str(SINGLE_CONNECTIONS),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 30, check=False)
    if done.returncode != 0:
        raise PhaseError(f"openloop failed ({done.returncode}):\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        seconds=seconds,
        requests=r["measured"],
        ok=r["ok"],
        accepted=r["ok"],
        busy_503=r["busy_503"],
        other_status=r["other_status"],
        socket_errors=r["socket_errors"] + r["incomplete"],
        p50_ms=r["p50_ms"],
        p99_ms=r["p99_ms"],
        extra={k: r[k] for k in ("rate", "p999_ms", "max_ms", "gen_lag_p99_ms")},
    )


# --- the run ------------------------------------------------------------------------------

# The open-loop rounds: every target gets the same rate; the first target rotates each round,
# so none always runs right after Headwater's load (or first, on a cold disk).
LATENCY_TARGETS = ("bare ASGI", "bare durable", "headwater")


@dataclass
class Run:
    seconds: int
    warmup: int
    subjects: int
    rounds: int
    sync_count: int
    work: Path
    single_file: Path = field(init=False)
    batch_file: Path = field(init=False)
    loads: dict[str, Load] = field(default_factory=dict)
    latency_rate: float | None = None
    latency: dict[str, list[Load]] = field(default_factory=dict)  # per target, one Load per round
    catch_up: dict[str, float | None] | None = None
    ceiling_figures: dict[str, float] | None = None
    sync_figures: dict[str, Any] | None = None
    broken: dict[str, str] = field(default_factory=dict)
    server_logs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    keys: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.single_file = self.work / "single.json"
        self.single_file.write_bytes(single_body())
        self.batch_file = self.work / "batch.json"
        self.batch_file.write_bytes(batch_body(subjects=self.subjects))

    def phase(self, name: str, fn: Any, *args: Any) -> None:
        print(f"running: {name} ...", flush=True)
        try:
            fn(*args)
        except (PhaseError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            self.broken[name] = str(exc)
            print(f"  {name} BROKEN (details at the end)", flush=True)

    def measure(self, name: str, server: Server, body_file: Path, key: str, connections: int) -> Load:
        url = f"{server.url}/v1/events"
        wrk(url, body_file, key, connections, self.warmup)
        server.check_alive()
        api_before, below_before = server.cpu_seconds()
        load = wrk(url, body_file, key, connections, self.seconds)
        server.check_alive()
        api_after, below_after = server.cpu_seconds()
        load.server_cpu_s = api_after - api_before + below_after - below_before
        if server.workers:
            load.worker_cpu_s = below_after - below_before
        self.loads[name] = load
        return load

    @contextlib.contextmanager
    def watched(self, server: Server) -> Iterator[Server]:
        """Run the server; afterwards keep what it logged after its start and how it stopped."""
        with running(server):
            startup_log_size = server.log.stat().st_size
            yield server
        # The server runs at log level warning, so anything it printed under load is news.
        with open(server.log, "rb") as f:
            f.seek(startup_log_size)
            log = f.read().decode(errors="replace").strip()
        if log:
            self.server_logs[server.name] = log
        self.notes += server.notes

    def headwater_server(self, name: str, data_dir: Path, worker: bool) -> tuple[Server, str]:
        """`headwater serve` on `data_dir` (a key made on first use), with or without its worker."""
        command = headwater_command()
        if data_dir not in self.keys:
            data_dir.mkdir()
            self.keys[data_dir] = create_key(command, ["--data-dir", str(data_dir)])
        port = free_port()
        argv = [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
        if not worker:
            argv.append("--no-worker")
        return Server(name, argv, self.work / f"{name}.log", port, workers=worker), self.keys[data_dir]

    def headwater(self, worker: bool) -> None:
        """Single events, then batches; with the worker, also how far behind it was left."""
        prefix = "headwater" if worker else "headwater no-worker"
        data_dir = self.work / prefix.replace(" ", "-")
        server, key = self.headwater_server(prefix.replace(" ", "-"), data_dir, worker)
        with self.watched(server):
            url = f"{server.url}/v1/events"
            check_contract(url, self.single_file.read_bytes(), key, 1)
            check_contract(url, self.batch_file.read_bytes(), key, BATCH_SIZE)
            self.measure(f"{prefix} single", server, self.single_file, key, SINGLE_CONNECTIONS)
            self.measure(f"{prefix} batch", server, self.batch_file, key, BATCH_CONNECTIONS)
            if worker:
                where = ["--data-dir", str(data_dir)]
                self.catch_up = catch_up(headwater_command(), where, timeout=10.0 * self.seconds)

    def uvicorn(self, name: str, app: str, env: dict[str, str]) -> Server:
        port = free_port()
        argv = [
            PYTHON,
            "-m",
            "uvicorn",
            app,
            "--app-dir",
            str(BENCH_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *UVICORN_FLAGS,
        ]
        return Server(name, argv, self.work / f"{name}.log", port, env)

    def bare(self) -> None:
        with running(self.uvicorn("bare", "bare_app:app", {})) as server:
            self.measure("bare ASGI single", server, self.single_file, "", SINGLE_CONNECTIONS)

    def fastapi(self) -> None:
        key = "bench"
        env = {"BENCH_DB_PATH": str(self.work / "fastapi.db"), "BENCH_KEY": key}
        with running(self.uvicorn("fastapi", "fastapi_app:app", env)) as server:
            check_contract(f"{server.url}/v1/events", self.single_file.read_bytes(), key, 1)
            self.measure("FastAPI single", server, self.single_file, key, SINGLE_CONNECTIONS)

    def ceiling(self) -> None:
        argv = [
            PYTHON,
            str(BENCH_DIR / "ceiling.py"),
            "--seconds",
            str(self.seconds),
            "--subjects",
            str(self.subjects),
            "--data-dir",
            str(self.work),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=self.seconds + 60, check=False)
        if done.returncode != 0:
            raise PhaseError(f"ceiling failed ({done.returncode}):\n{done.stderr[-2000:]}")
        self.ceiling_figures = json.loads(done.stdout)

    def latency_rounds(self) -> None:
        """Open loop at half Headwater's single-event maximum against the three targets, in
        interleaved rounds: the disk's slow spells (single fsyncs of hundreds of ms) then fall
        on every target alike, and the spread across rounds shows how much one round says."""
        single = self.loads.get("headwater single")
        if single is None or not single.ok:
            raise PhaseError("needs the rate of the headwater single phase, which did not run")
        self.latency_rate = rate = single.ok_per_s / 2
        headwater, key = self.headwater_server("headwater-latency", self.work / "headwater", worker=True)
        servers = {
            "bare ASGI": (self.uvicorn("bare-latency", "bare_app:app", {}), ""),
            "bare durable": (
                self.uvicorn("durable", "durable_app:app", {"BENCH_DB_PATH": str(self.work / "durable.db")}),
                "",
            ),
            "headwater": (headwater, key),
        }
        self.latency = {name: [] for name in LATENCY_TARGETS}
        with contextlib.ExitStack() as stack:
            for server, _ in servers.values():
                stack.enter_context(self.watched(server))
            for r in range(self.rounds):
                order = LATENCY_TARGETS[r % len(LATENCY_TARGETS) :] + LATENCY_TARGETS[: r % len(LATENCY_TARGETS)]
                for name in order:
                    server, key = servers[name]
                    load = openloop(f"{server.url}/v1/events", self.single_file, key, rate, self.seconds, self.warmup)
                    server.check_alive()
                    load.extra["round"] = r + 1
                    self.latency[name].append(load)

    def sync(self) -> None:
        argv = [PYTHON, str(BENCH_DIR / "sync.py"), "--count", str(self.sync_count), "--json"]
        max_seconds = 60 + self.sync_count * 0.3  # a bound on a hang, far above the expected
        argv += ["--max-seconds", f"{max_seconds:.0f}"]
        done = bounded_run(argv, max_seconds + 90)
        if done.returncode != 0:
            raise PhaseError(f"sync.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
        self.sync_figures = json.loads(done.stdout.strip().splitlines()[-1])
        if self.sync_figures.get("server_log"):
            self.server_logs["headwater (sync)"] = self.sync_figures["server_log"]
        self.notes += self.sync_figures.get("stop_notes", [])


def bounded_run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but on timeout SIGTERM first: the child stops the server it started."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                child.communicate(timeout=STOP_SECONDS + 10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
            raise
        return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)


# --- report -------------------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        wrk_version = (
            subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("[")[0].strip()
        )
    except OSError:
        wrk_version = "wrk missing"
    load1 = os.getloadavg()[0]
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({cpu}), Python {platform.python_version()}"
        f", SQLite {sqlite3.sqlite_version}, {wrk_version}, load avg at start {load1:.2f}"
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None or math.isnan(value):
        return "BROKEN"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def cpu_share(cpu_s: float | None, seconds: float) -> str:
    return "" if cpu_s is None else f"{cpu_s / seconds:.0%}"


def print_loads(run: Run) -> None:
    header = (
        f"{'phase':<34}{'rate':>18}{'p50 ms':>9}{'p99 ms':>9}{'200':>9}{'503':>6}"
        f"{'other':>7}{'srv cpu':>9}{'worker':>8}{'µs/event':>10}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        ("bare ASGI single (wrk)", "bare ASGI single", "req/s"),
        ("FastAPI+SQLite single (wrk)", "FastAPI single", "req/s"),
        ("headwater single (wrk)", "headwater single", "events/s"),
        ("headwater batch (wrk)", "headwater batch", "events/s"),
        ("headwater --no-worker single", "headwater no-worker single", "events/s"),
        ("headwater --no-worker batch", "headwater no-worker batch", "events/s"),
    ]
    for label, name, unit in rows:
        load = run.loads.get(name)
        if load is None:
            print(f"{label:<34}{'n/a':>18}")
            continue
        rate = load.events_per_s if unit == "events/s" else load.ok_per_s
        per_event = load.cpu_us_per_event
        print(
            f"{label:<34}{f'{rate:,.0f} {unit}':>18}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}"
            f"{load.ok:>9}{load.busy_503:>6}{load.other_status + load.socket_errors:>7}"
            f"{cpu_share(load.server_cpu_s, load.seconds):>9}{cpu_share(load.worker_cpu_s, load.seconds):>8}"
            f"{'' if per_event is None else f'{per_event:.1f}':>10}"
        )
    ceiling = run.ceiling_figures
    if ceiling is not None:
        rate = f"{ceiling['events_per_s']:,.0f} events/s"
        print(
            f"{'ceiling: parse + SQLite insert':<34}{rate:>18}{'':>40}"
            f"{ceiling['cpu_s'] / ceiling['seconds']:>9.0%}{'':>8}{ceiling['cpu_us_per_event']:>10.1f}"
        )
    print("  srv cpu: the server process and every process below it (100% = one core); worker: its worker child")
    if run.catch_up is not None:
        c = run.catch_up
        if not c["lag_at_end"]:
            caught = "kept up"
        elif c["caught_up_s"] is not None:
            caught = f"caught up {c['caught_up_s']:.1f}s later"
        else:
            caught = f"still {c['lag_left']} behind when the bench stopped waiting"
        # The first look is a `headwater status` process started as wrk exits: a few tenths late.
        print(f"  headwater's worker after the batch phase: {c['lag_at_end']} events behind, {caught}")


def p99s(loads: list[Load]) -> list[float]:
    return [load.p99_ms for load in loads]


def median_p99(run: Run, target: str) -> float | None:
    loads = run.latency.get(target)
    return statistics.median(p99s(loads)) if loads else None


def print_latency(run: Run) -> None:
    if not run.latency or run.latency_rate is None:
        return
    rounds = max(len(loads) for loads in run.latency.values())
    print(
        f"\nopen-loop latency at {run.latency_rate:,.0f} req/s (half of headwater single), {rounds} interleaved "
        f"round(s) of {run.warmup}s + {run.seconds}s, first target rotating; latency from each request's due time"
    )
    header = (
        f"{'target':<16}{'round':>6}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}"
        f"{'200':>8}{'503':>6}{'other':>7}{'gen lag p99':>13}"
    )
    print(header)
    print("-" * len(header))
    for target, loads in run.latency.items():
        for load in loads:
            x = load.extra
            print(
                f"{target:<16}{x['round']:>6}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}{x['p999_ms']:>10.2f}"
                f"{x['max_ms']:>9.2f}{load.ok:>8}{load.busy_503:>6}{load.other_status + load.socket_errors:>7}"
                f"{x['gen_lag_p99_ms']:>13.2f}"
            )
    for target, loads in run.latency.items():
        if loads:
            values = p99s(loads)
            print(
                f"  {target}: p99 median {statistics.median(values):.2f} ms, "
                f"spread {min(values):.2f}-{max(values):.2f} ms over {len(values)} round(s)"
            )


def print_sync(run: Run) -> None:
    figures = run.sync_figures
    if figures is None:
        return
    print(f"\nsync latency: {figures['sent']} sequential requests per endpoint on an idle `headwater serve`")
    header = f"{'endpoint':<40}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'ok':>7}{'wrong':>7}"
    print(header)
    print("-" * len(header))
    for name, e in figures["endpoints"].items():
        print(f"{name:<40}{e['p50_ms']:>9.2f}{e['p99_ms']:>9.2f}{e['max_ms']:>9.2f}{e['ok']:>7}{e['failures']:>7}")


Target = tuple[str, float | None, float, bool, str, str]  # label, value, target, higher is better, format, text


def ingest_targets(run: Run) -> list[Target]:
    def per_s(name: str, events: bool = True) -> float | None:
        load = run.loads.get(name)
        if load is None:
            return None
        return load.events_per_s if events else load.ok_per_s

    single = per_s("headwater single")
    batch = per_s("headwater batch")
    ceiling = run.ceiling_figures
    return [
        (
            "single: headwater / bare ASGI",
            ratio(single, per_s("bare ASGI single", False)),
            0.40,
            True,
            "{:.0%}",
            ">= 40%",
        ),
        ("single: headwater / FastAPI", ratio(single, per_s("FastAPI single", False)), 2.5, True, "{:.2f}x", ">= 2.5x"),
        (
            "single: worker / no-worker",
            ratio(single, per_s("headwater no-worker single")),
            0.90,
            True,
            "{:.0%}",
            ">= 90%",
        ),
        ("batch: headwater events/s", batch, 100_000, True, "{:,.0f}", ">= 100,000"),
        (
            "batch: headwater / ceiling",
            ratio(batch, ceiling["events_per_s"] if ceiling else None),
            0.80,
            True,
            "{:.0%}",
            ">= 80%",
        ),
        ("batch: worker / no-worker", ratio(batch, per_s("headwater no-worker batch")), 0.90, True, "{:.0%}", ">= 90%"),
    ]


def latency_targets(run: Run) -> list[Target]:
    headwater = median_p99(run, "headwater")
    targets: list[Target] = [
        ("latency: open-loop p99 (median)", headwater, 10.0, False, "{:.2f} ms", "<= 10 ms"),
        (
            "latency: p99 headwater / durable",
            ratio(headwater, median_p99(run, "bare durable")),
            1.0,
            False,
            "{:.2f}x",
            "<= 1.00x",
        ),
    ]
    if run.sync_figures is not None:
        endpoints = run.sync_figures["endpoints"]
        for name, e in endpoints.items():
            # "002 POST /api/v1/events/ingest" -> "sync p99: 002" (the table above has the route)
            targets.append((f"sync p99: {name.split()[0]}", e["p99_ms"], 50.0, False, "{:.2f} ms", "<= 50 ms"))
        wrong = sum(e["failures"] for e in endpoints.values())
        targets.append(("sync: wrong or non-200 answers", float(wrong), 0, False, "{:.0f}", "0"))
    return targets


def headwater_failures(run: Run) -> int:
    loads = [load for name, load in run.loads.items() if name.startswith("headwater")]
    return sum(load.failures for load in loads + run.latency.get("headwater", []))


def print_targets(run: Run) -> None:
    errors = float(headwater_failures(run)) if "headwater single" in run.loads else None
    targets = [
        *ingest_targets(run),
        *latency_targets(run),
        ("errors: headwater non-200 / socket", errors, 0, False, "{:.0f}", "0"),
    ]
    print()
    header = f"{'target':<40}{'measured':>14}{'target':>14}  result"
    print(header)
    print("-" * len(header))
    for label, value, target, higher, fmt, target_text in targets:
        shown = "n/a" if value is None else fmt.format(value)
        print(f"{label:<40}{shown:>14}{target_text:>14}  {verdict(value, target, higher)}")
    print(
        "  latency verdicts use the median over rounds of each target's p99; headwater / durable compares "
        "Headwater's median p99 with the durable reference's, at the same rate in the same rounds"
    )


def print_warnings(run: Run) -> None:
    failures = headwater_failures(run)
    if failures:
        print(
            f"\nWARNING: headwater answered {failures} requests with non-200 or "
            "socket errors/timeouts; its rates count only 200s."
        )
    sync = run.sync_figures or {}
    for name, e in sync.get("endpoints", {}).items():
        if e["failures"]:
            print(f"\nWARNING: sync {name}: {e['failures']} wrong answers (counted as infinitely slow); the first:")
            print(f"  {e['first_failure']}")
    if sync.get("stopped_early"):
        print(f"\nWARNING: sync stopped after {sync['sent']} of {sync['count']} requests per endpoint (its time bound)")
    for note in run.notes:
        print(f"\nNOTE: {note}")
    for name, log in run.server_logs.items():
        lines = log.splitlines()
        print(f"\nNOTE: {name} wrote {len(lines)} log lines during the run; the last ones:")
        print("\n".join(lines[-15:]))
    for name, error in run.broken.items():
        print(f"\nBROKEN phase {name}:\n{error}")


def report(run: Run, machine_info: str) -> None:
    print()
    print("Headwater benchmark")
    print(f"machine: {machine_info}")
    print(
        f"phases: {run.warmup}s warm-up + {run.seconds}s measured; single = 1 event/request "
        f"at {SINGLE_CONNECTIONS} connections; batch = {BATCH_SIZE} events/request "
        f"({run.subjects} subjects) at {BATCH_CONNECTIONS} connections; headwater = `serve` with its worker"
    )
    print()
    print_loads(run)
    print_latency(run)
    print_sync(run)
    print_targets(run)
    print_warnings(run)


def figures(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {name: vars(load) for name, load in run.loads.items()}
    out["ceiling"] = run.ceiling_figures or {}
    out["worker_catch_up"] = run.catch_up or {}
    out["latency"] = {
        "rate": run.latency_rate,
        "rounds": {target: [vars(load) for load in loads] for target, loads in run.latency.items()},
        "median_p99_ms": {target: median_p99(run, target) for target in run.latency},
    }
    out["sync"] = run.sync_figures or {}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2s phases, 1 latency round, 50 sync requests")
    parser.add_argument("--seconds", type=int, help="measured seconds per phase")
    parser.add_argument("--rounds", type=int, help="interleaved open-loop rounds (default 3, 1 with --quick)")
    parser.add_argument("--sync-count", type=int, help="sync requests per endpoint (default 300, 50 with --quick)")
    parser.add_argument(
        "--subjects", type=int, default=BATCH_SUBJECTS, help="distinct subjects per batch (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    seconds = args.seconds or (2 if args.quick else 6)
    rounds = args.rounds or (1 if args.quick else 3)
    sync_count = args.sync_count or (50 if args.quick else 300)
    # SIGTERM should clean up like Ctrl-C does: through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Also when started from a script that ignores SIGINT, so the servers are always stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    machine_info = machine()
    with tempfile.TemporaryDirectory(prefix="hw-bench-") as work:
        run = Run(
            seconds=seconds, warmup=1, subjects=args.subjects, rounds=rounds, sync_count=sync_count, work=Path(work)
        )
        run.phase("headwater", run.headwater, True)
        run.phase("headwater --no-worker", run.headwater, False)
        run.phase("bare ASGI", run.bare)
        run.phase("FastAPI", run.fastapi)
        run.phase("ceiling", run.ceiling)
        run.phase("latency rounds", run.latency_rounds)
        run.phase("sync", run.sync)
    report(run, machine_info)
    print(
        f"\ntotal time {time.monotonic() - started:.0f}s, load avg at end "
        f"{os.getloadavg()[0]:.2f} (other work on this machine skews every figure)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures(run), indent=2))
    return 1 if run.broken else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
