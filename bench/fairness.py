"""Fair sharing: one tenant floods, another sends 20 requests/s; the quiet one's latency.

    .venv/bin/python bench/fairness.py              # about 2 minutes
    .venv/bin/python bench/fairness.py --seconds 5  # shorter phases

One `headwater serve` on SQLite (a fresh temp dir), two tenants. The quiet tenant sends one
event per request, open-loop at 20 requests/s (latency from the scheduled time, so a stall
shows), first alone, then while the loud tenant floods with wrk: single events on 32
connections, then 1,000-event batches on 8. Prints the quiet tenant's p50/p99 in each phase,
the flood's own rate and refusals, and PASS/MISS for the target: under either flood the quiet
tenant's p99 at most twice its p99 alone (the lower of two phases alone, one before the floods
and one after). Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from run import Load, PhaseError, Server, free_port, headwater_command, openloop, running, wrk
from workload import batch_body, single_body

QUIET_RATE = 20.0
# The loud tenant's limit in the last phases: a tenth of what one process ingests.
LOUD_LIMIT = {"per_second": 4000, "burst": 4000}
TARGET_RATIO = 2.0
FLOODS = (("single events, 32 conns", "single", 32), ("1,000-event batches, 8 conns", "batch", 8))


def tenant_key(command: list[str], data_dir: Path, tenant: str, role: str = "ingest") -> str:
    argv = [*command, "keys", "create", "--tenant", tenant, "--role", role, "--data-dir", str(data_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PhaseError(f"`{' '.join(argv)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout.split()[-1]


def set_limit(base: str, admin: str, limit: dict[str, float]) -> None:
    body = json.dumps({"rate_limit": limit}).encode()
    request = urllib.request.Request(base + "/v1/settings/rate-limit", body, method="PUT")
    request.add_header("Authorization", f"Bearer {admin}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise PhaseError(f"could not set the loud tenant's limit: {response.status}")


def quiet(url: str, body: Path, key: str, seconds: int) -> Load:
    return openloop(url, body, key, QUIET_RATE, seconds, warmup=1)


def flooded(
    url: str, quiet_body: Path, quiet_key: str, flood_body: Path, flood_key: str, conns: int, seconds: int
) -> tuple[Load, Load]:
    """The quiet tenant's load while wrk floods; wrk starts first and runs past the end."""
    result: dict[str, Load] = {}

    def flood() -> None:
        result["flood"] = wrk(url, flood_body, flood_key, conns, seconds + 3)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        threading.Event().wait(1.5)  # the flood reaches its steady state first
        result["quiet"] = quiet(url, quiet_body, quiet_key, seconds)
    finally:
        flooder.join()
    return result["quiet"], result["flood"]


def row(name: str, load: Load) -> str:
    return f"  {name:<44} p50 {load.p50_ms:7.1f} ms   p99 {load.p99_ms:7.1f} ms   ({load.ok}/{load.requests} ok)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="each measured phase")
    parser.add_argument("--extra", nargs="*", default=[], help="more `headwater serve` arguments")
    args = parser.parse_args()
    command = headwater_command()
    with tempfile.TemporaryDirectory(prefix="headwater-fairness-") as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        quiet_key = tenant_key(command, data_dir, "quiet")
        loud_key = tenant_key(command, data_dir, "loud")
        loud_admin = tenant_key(command, data_dir, "loud", "admin")
        bodies = {"single": root / "single.json", "batch": root / "batch.json"}
        bodies["single"].write_bytes(single_body())
        bodies["batch"].write_bytes(batch_body())
        port = free_port()
        server = Server(
            "headwater",
            [*command, "serve", "--port", str(port), "--data-dir", str(data_dir), "--log-level", "error", *args.extra],
            root / "server.log",
            port,
            workers=True,
        )
        url = server.url + "/v1/events"
        with running(server):
            alone = quiet(url, bodies["single"], quiet_key, args.seconds)
            phases: list[tuple[str, Load, Load]] = []
            for limited in (False, True):
                if limited:
                    set_limit(server.url, loud_admin, LOUD_LIMIT)
                for name, body, conns in FLOODS:
                    load, flood = flooded(url, bodies["single"], quiet_key, bodies[body], loud_key, conns, args.seconds)
                    phases.append((f"{name}{', limited' if limited else ''}", load, flood))
                    server.check_alive()
            again = quiet(url, bodies["single"], quiet_key, args.seconds)
        # This disk stalls now and then: a stall in one phase alone would make every flood look
        # fair. The quiet tenant is measured alone before and after the floods, and the lower
        # p99 is the one each flood is held to.
        baseline = min(alone.p99_ms, again.p99_ms)
        print(f"Quiet tenant at {QUIET_RATE:.0f} requests/s, one event each (SQLite, {args.seconds} s phases):")
        print(row("alone, before the floods", alone))
        print(row("alone, after them", again))
        print(f"Under a flood (the loud tenant limited to {LOUD_LIMIT['per_second']:,} events/s where it says so):")
        for name, load, flood in phases:
            ratio = load.p99_ms / baseline
            verdict = "PASS" if ratio <= TARGET_RATIO and load.ok == load.requests else "MISS"
            print(row(name, load) + f"   p99 x{ratio:.1f} {verdict}")
            print(
                f"    the flood: {flood.events_per_s:,.0f} events/s accepted, {flood.ok_per_s:,.0f} requests/s"
                f" ok, {flood.busy_503} refused 503, {flood.other_status} other statuses (429 among them)"
            )
        print(f"Target: the quiet tenant's p99 under a flood at most {TARGET_RATIO:.0f}x its p99 alone.")
    return 0  # a report: misses are printed, not an error


if __name__ == "__main__":
    sys.exit(main())
