"""Where the ingest path's CPU goes: `headwater serve --no-worker` sampled by py-spy under wrk,
each sample put in one stage, each stage as µs of server CPU per event.

    .venv/bin/python bench/profile.py                # SQLite, then PostgreSQL: single events, then batches
    .venv/bin/python bench/profile.py --seconds 8 --backend sqlite

How: py-spy samples, RATE times a second for the whole measured phase, the thread that holds
the GIL (`--gil`: a thread waiting on a lock or a sleep is not running, and py-spy's own idle
test does not see those waits); the server's CPU time is read from /proc over the same seconds.
A sample belongs to the stage of the innermost frame that a rule of `STAGES` names, so a
function's own time is its stage's, and what it calls is the callee's stage when that has one.
A Python frame stands for the C it calls with the GIL held (the socket writes under uvicorn's
`send`, msgspec under the parse). A stage's µs per event is its samples' time (samples / RATE)
per event. What is left of the CPU is C that runs with the GIL released: SQLite's statements
and commit, and py-spy cannot place it in a stage ("outside the GIL"). The API runs alone
(`--no-worker`): its worker's CPU is the processing, not the ingest; `bench/run.py` reports both.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import (
    BATCH_CONNECTIONS,
    BENCH_DIR,
    PYTHON,
    SINGLE_CONNECTIONS,
    UVICORN_FLAGS,
    PhaseError,
    Server,
    check_contract,
    create_key,
    free_port,
    headwater_command,
    running,
    wrk,
)
from workload import BATCH_SIZE, batch_body, single_body

from tests.servers import postgres_server

RATE = 200  # samples per second per thread

# (stage, pattern on "function (file)"): the innermost frame a pattern matches names the stage.
# Listed in the order of the ingest path; the first pattern that matches a frame wins.
STAGES: list[tuple[str, str]] = [
    ("metrics (held counts, their flush)", r"headwater/metrics\.py|prometheus_client"),
    ("id generation", r"headwater/ids\.py"),
    ("authentication", r"headwater/auth\.py|registry\.py\)|find_key"),
    ("rate limit", r"headwater/ratelimit\.py|Pipeline\.(precheck|admit)"),
    ("validation (schemas, number range)", r"headwater/schemas\.py|may_hold_out_of_range|out_of_range_numbers"),
    ("body read", r"read_body|RequestResponseCycle\.receive"),
    ("body parse and drafts", r"split_native_body|draft_from|nesting_exceeds|parse_time|headwater/parsing\.py"),
    ("event construction and results", r"headwater/pipeline\.py|headwater/events\.py"),
    ("writer: dedup lookups and rows", r"append_events|_quarantine_row|partition_of|Transaction\.next_seq"),
    ("writer: inserts", r"insert_events|copy_records|_copy_rows|COPY"),
    ("writer: begin, commit, group", r"_run_locked|_run_group|_run_isolated|write_lock|_write_loop|_write_group"),
    ("hand-off to the writer and back", r"headwater/storage/|concurrent/futures|asyncio/futures|threading\.py"),
    ("result encoding and response", r"send_json|send_error"),
    ("access log, request id", r"headwater/access_log\.py"),
    ("middleware: CORS, body limit, dispatch", r"headwater/cors\.py|headwater/middleware\.py|HotPathDispatcher"),
    ("endpoint (IngestEndpoint's own lines)", r"headwater/api/events\.py"),
    ("HTTP: response writes (uvicorn's send)", r"RequestResponseCycle\.send|on_response_complete"),
    ("HTTP: parse, protocol, deadlines", r"uvicorn/|httptools|headwater/http_protocol\.py"),
    ("event loop", r"asyncio/|uvloop|Runner\.run"),
]
OTHER = "other"
OUTSIDE = "outside the GIL (SQLite's C, with the GIL released)"


@dataclass
class Profile:
    label: str
    events: int
    seconds: float
    cpu_s: float
    samples: Counter[str]

    @property
    def us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for stage, pattern in COMPILED:
            if pattern.search(frame):
                return stage
    return OTHER


COMPILED = [(stage, re.compile(pattern)) for stage, pattern in STAGES]


def read_samples(path: Path) -> Counter[str]:
    """py-spy's raw format: one line per distinct stack, `frame;frame;... count`."""
    samples: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples[stage_of(stack.split(";"))] += int(count)
    return samples


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise PhaseError("py-spy not found: pip install -e '.[bench]'")
    return found


@contextlib.contextmanager
def sampling(pid: int, seconds: int, out: Path) -> Iterator[None]:
    argv = [py_spy(), "record", "--gil", "--nonblocking", "-r", str(RATE), "-d", str(seconds)]
    argv += ["-f", "raw", "-o", str(out), "-p", str(pid)]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        _, err = sampler.communicate(timeout=seconds + 30)
        if sampler.returncode != 0 or not out.exists():
            raise PhaseError(f"py-spy failed ({sampler.returncode}): {err.decode()[-500:]}")


def profile(label: str, server: Server, body: Path, key: str, connections: int, seconds: int, work: Path) -> Profile:
    url = f"{server.url}/v1/events"
    wrk(url, body, key, connections, 1)  # warm-up
    assert server.process is not None
    out = work / f"{label.replace(' ', '-')}.txt"
    before, _ = server.cpu_seconds()
    with sampling(server.process.pid, seconds, out):
        load = wrk(url, body, key, connections, seconds)
    after, _ = server.cpu_seconds()
    events = load.accepted or load.ok  # the bare app stores nothing: a request is its event
    if load.failures or not events:
        raise PhaseError(f"{label}: {load.failures} failed requests, {load.accepted} events accepted")
    return Profile(label, events, load.seconds, after - before, read_samples(out))


def backend_profiles(name: str, where: list[str], work: Path, seconds: int) -> list[Profile]:
    command = headwater_command()
    key = create_key(command, where)
    port = free_port()
    argv = [*command, "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port), *where]
    single, batch = work / "single.json", work / "batch.json"
    single.write_bytes(single_body())
    batch.write_bytes(batch_body())
    with running(Server(name, argv, work / f"{name}.log", port)) as server:
        check_contract(f"{server.url}/v1/events", batch.read_bytes(), key, BATCH_SIZE)
        return [
            profile(f"{name} single", server, single, key, SINGLE_CONNECTIONS, seconds, work),
            profile(f"{name} batch", server, batch, key, BATCH_CONNECTIONS, seconds, work),
        ]


def bare_profile(work: Path, seconds: int) -> Profile:
    """The bare ASGI app under the same uvicorn: the HTTP rows' floor."""
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", "bare_app:app", "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1"]
    argv += ["--port", str(port), *UVICORN_FLAGS]
    single = work / "single.json"
    single.write_bytes(single_body())
    with running(Server("bare", argv, work / "bare.log", port)) as server:
        load = profile("bare ASGI single", server, single, "", SINGLE_CONNECTIONS, seconds, work)
    # It answers without storing: count requests as its events.
    return load


def report(profiles: list[Profile]) -> None:
    print()
    width = max(len(stage) for stage in [*(stage for stage, _ in STAGES), OUTSIDE])
    header = f"{'stage':<{width}}" + "".join(f"  {p.label:>16}" for p in profiles)
    print(f"µs of server CPU per event, by stage (py-spy --gil at {RATE} Hz; share of the CPU in brackets)")
    print(header)
    print("-" * len(header))
    for stage in [*(stage for stage, _ in STAGES), OTHER, OUTSIDE]:
        cells = []
        for p in profiles:
            held_us = sum(p.samples.values()) / RATE / p.events * 1e6
            us = max(0.0, p.us_per_event - held_us) if stage == OUTSIDE else p.samples[stage] / RATE / p.events * 1e6
            cells.append(f"  {us:8.1f} ({us / p.us_per_event:4.0%})")
        print(f"{stage:<{width}}" + "".join(cells))
    print("-" * len(header))
    print(f"{'all (CPU / events)':<{width}}" + "".join(f"  {p.us_per_event:8.1f}       " for p in profiles))
    print(f"{'events/s':<{width}}" + "".join(f"  {p.events / p.seconds:8,.0f}       " for p in profiles))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="sampled seconds per load (default: %(default)s)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    profiles: list[Profile] = []
    with tempfile.TemporaryDirectory(prefix="hw-profile-") as tmp:
        work = Path(tmp)
        profiles.append(bare_profile(work, args.seconds))
        if args.backend in ("sqlite", "both"):
            (work / "data").mkdir()
            profiles += backend_profiles("sqlite", ["--data-dir", str(work / "data")], work, args.seconds)
        if args.backend in ("postgres", "both"):
            with postgres_server(durable=True) as postgres:
                where = ["--store", postgres.url(postgres.new_database())]
                profiles += backend_profiles("postgres", where, work, args.seconds)
    report(profiles)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PhaseError as exc:
        print(f"profile: {exc}", file=sys.stderr)
        sys.exit(1)
