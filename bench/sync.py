"""Sync latency across processes: the routes that answer only once the worker has processed the event.

On an idle `headwater serve` (fresh data dir; the API in the server process, the consumers in
its worker child) with the README's trigger for 002 and the README's challenge for 003, sends
requests one at a time to 002's `POST /api/v1/events/ingest`, 003's
`POST /api/v1/ingest/events/sync` and `POST /v1/events?wait=processed`, taking the endpoints in
turn, each request with its own subject and idempotency key. Latency is the whole round trip
on a keep-alive connection. Every answer is checked for the processed result (the trigger
fired, the challenge progressed), and one that is not a 200 with it counts as slower than
anything measured, so a fast wrong answer cannot improve the figure. Target: p99 <= 50 ms.

    .venv/bin/python bench/sync.py                      # 300 requests per endpoint, a table
    .venv/bin/python bench/sync.py --count 50 --json    # one JSON line (what run.py reads)
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openloop import percentile
from run import PhaseError, Server, create_key, free_port, headwater_command, http_post, running

TARGET_P99_MS = 50.0
WARMUP = 5  # unmeasured requests per endpoint: first connection, first look-ups
# The README's examples: a support_call also fires triggers on customer.updated (002's type
# mapping), and a 520 purchase at the till completes the 500-a-week challenge (003).
TRIGGER = {
    "name": "call back",
    "event_types": ["customer.updated"],
    "action": {"type": "journey_enroll", "config": {"journeyId": "jr_care"}},
}
BADGE = {"key": "big_spender", "name": "Big spender", "description": "Spent 500 in a week"}
CHALLENGE = {
    "name": "500 a week",
    "fact_type": "custom.purchase",
    "metric": {"sum": "data.amount"},
    "target": 500,
    "period": "weekly",
    "repeatable": True,
    "conditions": {"field": "data.channel", "op": "in", "value": ["web", "pos"]},
    "reward": {"badge": "big_spender", "points": 50},
}


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# Each check returns what is wrong with a 200's body, or None when it holds the processed result.


def check_002(body: dict[str, Any]) -> str | None:
    # A new customer each time, so the journey enrolment is dispatched, not only matched.
    if not body.get("triggersMatched") or not body.get("actionsDispatched"):
        return "triggersMatched or actionsDispatched empty"
    return "actionErrors present" if body.get("actionErrors") else None


def check_003(body: dict[str, Any]) -> str | None:
    progress = body.get("progress") or []
    return None if progress and progress[0].get("completed") else "no completed progress"


def check_native(body: dict[str, Any]) -> str | None:
    results = body.get("results") or [{}]
    if results[0].get("status") != "accepted":
        return f"status {results[0].get('status')!r}"
    return None if results[0].get("triggers_matched") else "triggers_matched empty"


@dataclass
class Endpoint:
    name: str
    path: str
    body: Callable[[str], bytes]  # from a request's unique suffix
    check: Callable[[dict[str, Any]], str | None]
    api_key_header: bool = False  # 003 documents X-API-Key
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""


def endpoints() -> list[Endpoint]:
    return [
        Endpoint(
            "002 POST /api/v1/events/ingest",
            "/api/v1/events/ingest",
            lambda n: _json({"type": "support_call", "customerId": f"c_{n}", "data": {"reason": "billing"}}),
            check_002,
        ),
        Endpoint(
            "003 POST /api/v1/ingest/events/sync",
            "/api/v1/ingest/events/sync",
            lambda n: _json(
                {
                    "event_name": "purchase",
                    "participant_id": f"p_{n}",
                    "idempotency_key": f"sync-{n}",
                    "properties": {"amount": 520, "channel": "pos"},
                }
            ),
            check_003,
            api_key_header=True,
        ),
        Endpoint(
            "native POST /v1/events?wait=processed",
            "/v1/events?wait=processed",
            lambda n: _json({"type": "support_call", "subject": f"s_{n}", "idempotency_key": f"wait-{n}"}),
            check_native,
        ),
    ]


class Client:
    """One keep-alive connection, opened again after an error."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.conn: http.client.HTTPConnection | None = None

    def post(self, endpoint: Endpoint, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if endpoint.api_key_header:
            headers["X-API-Key"] = self.key
        else:
            headers["Authorization"] = f"Bearer {self.key}"
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request("POST", endpoint.path, body, headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def define_rules(url: str, key: str) -> None:
    for path, body in (("/v1/triggers", TRIGGER), ("/v1/badges", BADGE), ("/v1/challenges", CHALLENGE)):
        status, response = http_post(f"{url}{path}", _json(body), key)
        if status not in (200, 201):
            raise PhaseError(f"POST {path} answered {status}: {response[:500]!r}")


def problem(status: int, response: bytes, check: Callable[[dict[str, Any]], str | None]) -> str | None:
    if status != 200:
        return f"status {status}: {response[:300]!r}"
    try:
        body = json.loads(response)
    except ValueError:
        return f"not JSON: {response[:300]!r}"
    wrong = check(body)
    return None if wrong is None else f"{wrong}: {response[:300]!r}"


def send(client: Client, endpoint: Endpoint, suffix: str, measured: bool) -> None:
    started = time.perf_counter()
    try:
        status, response = client.post(endpoint, endpoint.body(suffix))
        wrong = problem(status, response, endpoint.check)
    except (OSError, http.client.HTTPException) as exc:
        wrong = f"{type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started
    if not measured:
        return
    if wrong is None:
        endpoint.latencies.append(elapsed)
    else:
        endpoint.failures += 1
        endpoint.first_failure = endpoint.first_failure or wrong


def summary(endpoint: Endpoint) -> dict[str, Any]:
    # A failed request counts as slower than anything measured (as openloop.py does).
    latencies = sorted(endpoint.latencies) + [math.inf] * endpoint.failures
    ms = 1000.0
    return {
        "requests": len(latencies),
        "ok": len(endpoint.latencies),
        "failures": endpoint.failures,
        "first_failure": endpoint.first_failure,
        "p50_ms": percentile(latencies, 50) * ms,
        "p99_ms": percentile(latencies, 99) * ms,
        "max_ms": latencies[-1] * ms if latencies else math.nan,
    }


def measure(server: Server, key: str, count: int, max_seconds: float) -> dict[str, Any]:
    client = Client(server.port, key)
    targets = endpoints()
    for i in range(WARMUP):
        for endpoint in targets:
            send(client, endpoint, f"warm{i}", measured=False)
    deadline = time.monotonic() + max_seconds
    sent = 0
    # In turn rather than one endpoint after the other: a slow spell of the disk hits all three.
    while sent < count and time.monotonic() < deadline:
        for endpoint in targets:
            send(client, endpoint, str(sent), measured=True)
        sent += 1
        server.check_alive()
    return {
        "count": count,
        "sent": sent,
        "stopped_early": sent < count,
        "target_p99_ms": TARGET_P99_MS,
        "endpoints": {e.name: summary(e) for e in targets},
    }


def run(work: Path, count: int, max_seconds: float) -> dict[str, Any]:
    command = headwater_command()
    data_dir = work / "sync-headwater"
    data_dir.mkdir()
    # 002 wants admin or editor; rules need configure
    key = create_key(command, ["--data-dir", str(data_dir)], role="admin")
    port = free_port()
    argv = [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    server = Server("headwater (sync)", argv, work / "sync-headwater.log", port, workers=True)
    with running(server):
        startup_log_size = server.log.stat().st_size
        define_rules(server.url, key)
        figures = measure(server, key, count, max_seconds)
    with open(server.log, "rb") as f:
        f.seek(startup_log_size)
        figures["server_log"] = f.read().decode(errors="replace").strip()
    figures["stop_notes"] = server.notes
    return figures


def print_table(figures: dict[str, Any]) -> None:
    print(f"sync latency, {figures['sent']} sequential requests per endpoint on an idle `headwater serve`")
    header = f"{'endpoint':<40}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'ok':>6}{'failed':>8}  p99 <= 50 ms"
    print(header)
    print("-" * len(header))
    for name, e in figures["endpoints"].items():
        result = "PASS" if e["p99_ms"] <= TARGET_P99_MS else "MISS"
        figures_ms = f"{e['p50_ms']:>9.2f}{e['p99_ms']:>9.2f}{e['max_ms']:>9.2f}"
        print(f"{name:<40}{figures_ms}{e['ok']:>6}{e['failures']:>8}  {result}")
    for name, e in figures["endpoints"].items():
        if e["failures"]:
            print(f"\nWARNING: {name}: {e['failures']} wrong answers; the first: {e['first_failure']}")
    if figures["stopped_early"]:
        print(f"\nWARNING: stopped after {figures['sent']} of {figures['count']} rounds (--max-seconds)")
    for note in figures["stop_notes"]:
        print(f"\nNOTE: {note}")
    if figures["server_log"]:
        print("\nNOTE: the server logged during the run; the last lines:")
        print("\n".join(figures["server_log"].splitlines()[-15:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="measured requests per endpoint (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    # SIGTERM (run.py's timeout) should stop the server like Ctrl-C does: through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with tempfile.TemporaryDirectory(prefix="hw-sync-") as work:
            figures = run(Path(work), args.count, args.max_seconds)
    except PhaseError as exc:
        print(f"sync: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures))
    else:
        print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
