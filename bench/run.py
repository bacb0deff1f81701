"""Headwater benchmark: figures side by side in one run, as ratios against ceilings.

    .venv/bin/python bench/run.py            # full run, about a minute
    .venv/bin/python bench/run.py --quick    # shorter phases, for a smoke check

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


@dataclass
class Server:
    """One server subprocess in its own process group, so stopping it stops its children."""

    name: str
    argv: list[str]
    log: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

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

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far, all threads included."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            raise PhaseError(f"{self.name} died (exit {code}):\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid  # start_new_session made it the group leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)


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


def create_key(command: list[str], data_dir: Path) -> str:
    argv = [*command, "keys", "create", "--tenant", "bench", "--role", "ingest", "--data-dir", str(data_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise PhaseError(f"`{' '.join(argv)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return lines[-1]


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
    server_cpu_s: float | None = None
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


@dataclass
class Run:
    seconds: int
    warmup: int
    subjects: int
    work: Path
    single_file: Path = field(init=False)
    batch_file: Path = field(init=False)
    loads: dict[str, Load] = field(default_factory=dict)
    ceiling_figures: dict[str, float] | None = None
    broken: dict[str, str] = field(default_factory=dict)
    server_logs: dict[str, str] = field(default_factory=dict)

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
        cpu_before = server.cpu_seconds()
        load = wrk(url, body_file, key, connections, self.seconds)
        server.check_alive()
        load.server_cpu_s = server.cpu_seconds() - cpu_before
        self.loads[name] = load
        return load

    def headwater(self) -> None:
        command = headwater_command()
        data_dir = self.work / "headwater"
        data_dir.mkdir()
        key = create_key(command, data_dir)
        port = free_port()
        argv = [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
        server = Server("headwater", argv, self.work / "headwater.log", port)
        with running(server):
            startup_log_size = server.log.stat().st_size
            url = f"{server.url}/v1/events"
            check_contract(url, self.single_file.read_bytes(), key, 1)
            check_contract(url, self.batch_file.read_bytes(), key, BATCH_SIZE)
            single = self.measure("headwater single", server, self.single_file, key, SINGLE_CONNECTIONS)
            self.loads["headwater open-loop"] = openloop(
                url, self.single_file, key, single.ok_per_s / 2, self.seconds, self.warmup
            )
            server.check_alive()
            self.measure("headwater batch", server, self.batch_file, key, BATCH_CONNECTIONS)
        # The server runs at log level warning, so anything it printed under load is news.
        with open(server.log, "rb") as f:
            f.seek(startup_log_size)
            log = f.read().decode(errors="replace").strip()
        if log:
            self.server_logs["headwater"] = log

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
            reference = self.loads.get("headwater open-loop")
            if reference is not None:
                # The same open-loop rate against the ceiling app: what the generator adds.
                self.loads["bare open-loop"] = openloop(
                    f"{server.url}/v1/events", self.single_file, "", reference.extra["rate"], self.seconds, self.warmup
                )

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


def report(run: Run, machine_info: str) -> None:
    loads = run.loads
    print()
    print("Headwater benchmark")
    print(f"machine: {machine_info}")
    print(
        f"phases: {run.warmup}s warm-up + {run.seconds}s measured; single = 1 event/request "
        f"at {SINGLE_CONNECTIONS} connections; batch = {BATCH_SIZE} events/request "
        f"({run.subjects} subjects) at {BATCH_CONNECTIONS} connections"
    )
    print()
    header = (
        f"{'phase':<34}{'rate':>18}{'p50 ms':>9}{'p99 ms':>9}{'200':>9}{'503':>6}"
        f"{'other':>7}{'srv cpu':>9}{'µs/event':>10}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        ("bare ASGI single (wrk)", "bare ASGI single", "req/s"),
        ("FastAPI+SQLite single (wrk)", "FastAPI single", "req/s"),
        ("headwater single (wrk)", "headwater single", "events/s"),
        ("headwater batch (wrk)", "headwater batch", "events/s"),
        ("headwater open-loop", "headwater open-loop", "req/s"),
        ("bare ASGI open-loop (reference)", "bare open-loop", "req/s"),
    ]
    for label, name, unit in rows:
        load = loads.get(name)
        if load is None:
            print(f"{label:<34}{'n/a':>18}")
            continue
        rate = load.extra.get("rate", load.events_per_s if unit == "events/s" else load.ok_per_s)
        cpu = "" if load.server_cpu_s is None else f"{load.server_cpu_s / load.seconds:.0%}"
        per_event = load.cpu_us_per_event
        print(
            f"{label:<34}{f'{rate:,.0f} {unit}':>18}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}"
            f"{load.ok:>9}{load.busy_503:>6}{load.other_status + load.socket_errors:>7}"
            f"{cpu:>9}{'' if per_event is None else f'{per_event:.1f}':>10}"
        )
    ceiling = run.ceiling_figures
    if ceiling is not None:
        rate = f"{ceiling['events_per_s']:,.0f} events/s"
        print(
            f"{'ceiling: parse + SQLite insert':<34}{rate:>18}{'':>40}"
            f"{ceiling['cpu_s'] / ceiling['seconds']:>9.0%}{ceiling['cpu_us_per_event']:>10.1f}"
        )
    for name in ("headwater open-loop", "bare open-loop"):
        if name in loads:
            x = loads[name].extra
            print(
                f"  {name}: p99.9 {x['p999_ms']:.2f} ms, max {x['max_ms']:.2f} ms, "
                f"generator lag p99 {x['gen_lag_p99_ms']:.2f} ms"
            )

    def per_s(name: str, events: bool = True) -> float | None:
        load = loads.get(name)
        if load is None:
            return None
        return load.events_per_s if events else load.ok_per_s

    single = per_s("headwater single")
    batch = per_s("headwater batch")
    open_loop = loads.get("headwater open-loop")
    headwater_failures = sum(loads[n].failures for n in loads if n.startswith("headwater"))
    targets = [
        (
            "single: headwater / bare ASGI",
            ratio(single, per_s("bare ASGI single", False)),
            0.40,
            True,
            "{:.0%}",
            ">= 40%",
        ),
        ("single: headwater / FastAPI", ratio(single, per_s("FastAPI single", False)), 2.5, True, "{:.2f}x", ">= 2.5x"),
        ("batch: headwater events/s", batch, 100_000, True, "{:,.0f}", ">= 100,000"),
        (
            "batch: headwater / ceiling",
            ratio(batch, ceiling["events_per_s"] if ceiling else None),
            0.80,
            True,
            "{:.0%}",
            ">= 80%",
        ),
        (
            "latency: open-loop p99 at half max",
            open_loop.p99_ms if open_loop else None,
            10.0,
            False,
            "{:.2f} ms",
            "<= 10 ms",
        ),
        (
            "errors: headwater non-200 / socket",
            float(headwater_failures) if "headwater single" in loads else None,
            0,
            False,
            "{:.0f}",
            "0",
        ),
    ]
    print()
    header = f"{'target':<38}{'measured':>14}{'target':>14}  result"
    print(header)
    print("-" * len(header))
    for label, value, target, higher, fmt, target_text in targets:
        shown = "n/a" if value is None else fmt.format(value)
        print(f"{label:<38}{shown:>14}{target_text:>14}  {verdict(value, target, higher)}")
    if headwater_failures:
        print(
            f"\nWARNING: headwater answered {headwater_failures} requests with non-200 or "
            "socket errors/timeouts; its rates count only 200s."
        )
    for name, log in run.server_logs.items():
        lines = log.splitlines()
        print(f"\nNOTE: {name} wrote {len(lines)} log lines during the run; the last ones:")
        print("\n".join(lines[-15:]))
    for name, error in run.broken.items():
        print(f"\nBROKEN phase {name}:\n{error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2s phases instead of 6s")
    parser.add_argument("--seconds", type=int, help="measured seconds per phase")
    parser.add_argument(
        "--subjects", type=int, default=BATCH_SUBJECTS, help="distinct subjects per batch (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    seconds = args.seconds or (2 if args.quick else 6)
    # SIGTERM should clean up like Ctrl-C does: through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Also when started from a script that ignores SIGINT, so the servers are always stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    machine_info = machine()
    with tempfile.TemporaryDirectory(prefix="hw-bench-") as work:
        run = Run(seconds=seconds, warmup=1, subjects=args.subjects, work=Path(work))
        run.phase("headwater", run.headwater)
        run.phase("bare ASGI", run.bare)
        run.phase("FastAPI", run.fastapi)
        run.phase("ceiling", run.ceiling)
    report(run, machine_info)
    print(
        f"\ntotal time {time.monotonic() - started:.0f}s, load avg at end "
        f"{os.getloadavg()[0]:.2f} (other work on this machine skews every figure)"
    )
    if args.json:
        figures = {name: vars(load) for name, load in run.loads.items()}
        figures["ceiling"] = run.ceiling_figures or {}
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if run.broken else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
