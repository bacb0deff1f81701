"""`GET /metrics`, scraped from a real `headwater serve` (its API and the worker it forks, one
multiprocess directory between them) after known traffic: the numbers are what was sent."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, free_port, run_cli
from tests.servers import Postgres

TOKEN = "metrics-token-0123456789"


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise TimeoutError(what)


def test_metrics_count_what_was_sent_per_tenant(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    env = {
        "HEADWATER_METRICS_TOKEN": TOKEN,
        "HEADWATER_ALLOW_PRIVATE_WEBHOOKS": "1",
        "HEADWATER_WEBHOOK_RETRY_SCHEDULE": "0",  # one attempt, then the delivery has failed
    }
    server = server_factory(tmp_path / "data", env)
    server.start()
    server.drain()
    acme, other = (
        run_cli("keys", "create", "--tenant", t, "--role", "admin", "--data-dir", str(server.data_dir)).stdout.split()[
            -1
        ]
        for t in ("acme", "other")
    )
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {acme}"}, timeout=90) as client:
        trigger = client.post(
            "/v1/triggers",
            json={"name": "every buy", "event_types": ["buy"], "action": {"type": "journey_enroll",
                  "config": {"journeyId": "jr_1"}}},
        )  # fmt: skip
        assert trigger.status_code == 201, trigger.text
        hook = client.post(
            "/v1/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/nobody", "subscriptions": ["event.buy"]}
        )
        assert hook.status_code == 201, hook.text
        events = [{"type": "buy", "subject": f"s{i}", "idempotency_key": f"k{i}"} for i in range(5)]
        sent = client.post("/v1/events?wait=processed", json={"events": events})
        assert sent.json()["accepted"] == 5
        again = client.post("/v1/events", json={"events": events[:2]})
        assert again.json()["duplicates"] == 2
        bad = client.post("/v1/events", json={"events": [{"type": ""}, {"type": ""}, {"type": "x", "colour": 1}]})
        assert [r["errors"][0]["code"] for r in bad.json()["results"]] == ["too_short", "too_short", "unknown_field"]
        limited = client.post("/v1/keys", json={"role": "ingest", "rate_limit": {"per_second": 0.01, "burst": 1}})
        slow = {"Authorization": f"Bearer {limited.json()['key']}"}
        assert client.post("/v1/events", json={"type": "visit"}, headers=slow).status_code == 200
        assert client.post("/v1/events", json={"type": "visit"}, headers=slow).status_code == 429
        # The webhook's one attempt, to a port nobody listens on, is made in the worker.
        wait_for(
            lambda: [d["status"] for d in client.get("/v1/deliveries").json()["data"]] == ["failed"] * 5,
            "the five deliveries failed",
        )
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {other}"}, timeout=90) as client:
        assert client.post("/v1/events", json={"type": "visit"}).json()["accepted"] == 1

    found = scrape(server.url)
    acme_live = (("mode", "live"), ("tenant", "acme"))
    assert found["headwater_events_accepted_total", acme_live] == 6  # five buys and the limited key's visit
    assert found["headwater_events_accepted_total", (("mode", "live"), ("tenant", "other"))] == 1
    assert found["headwater_events_duplicate_total", acme_live] == 2
    rejected = {
        dict(labels)["reason"]: v for (name, labels), v in found.items() if name == "headwater_events_rejected_total"
    }
    assert rejected == {"too_short": 2, "unknown_field": 1}
    assert found["headwater_rate_limit_refusals_total", (("tenant", "acme"),)] == 1
    assert found["headwater_trigger_firings_total", acme_live] == 5
    assert found["headwater_webhook_attempts_total", (("outcome", "failed"),)] == 5  # one per buy of the 5
    assert found["headwater_write_queue_events", ()] == 0
    # Every event, and the quarantined ones, went through group commits of the log.
    assert found["headwater_group_commit_events_sum", ()] >= 7 + 3
    assert found["headwater_group_commit_seconds_count", ()] >= 1
    route = (("method", "POST"), ("route", "/v1/events"), ("status", "200"))
    assert found["headwater_request_seconds_count", route] == 5  # the 429 aside
    assert (
        found["headwater_request_seconds_count", (("method", "POST"), ("route", "/v1/events"), ("status", "429"))] == 1
    )
    assert found["headwater_log_head", ()] == 7
    lag = {dict(labels)["consumer"] for (name, labels), v in found.items() if name == "headwater_consumer_lag_events"}
    assert lag == {"triggers", "facts", "catalog"}

    # The same at a glance, then the consumers' table.
    glance = run_cli(
        "status", "--url", server.url, "--data-dir", str(server.data_dir), env={"HEADWATER_METRICS_TOKEN": TOKEN}
    ).stdout.splitlines()
    groups = found["headwater_group_commit_events_count", ()]
    assert glance[:10] == [
        "ingest acme/live: 6 accepted, 2 duplicates, 3 rejected",
        "ingest other/live: 1 accepted, 0 duplicates, 0 rejected",
        "rejected by reason: too_short 2, unknown_field 1",
        glance[3],
        "rate-limit refusals: acme 1",
        "trigger firings: acme/live 5",
        "webhook attempts: failed 5",
        "dead letters: none",
        "consumer lag: 0 events in all",
        "log head: 7; workers: " + glance[9].split("workers: ")[1],
    ]
    assert glance[3].startswith(f"write queue: 0 events; group commits: {groups:,.0f}, ")
    wrong = run_cli("status", "--url", server.url, "--data-dir", str(server.data_dir), check=False)
    assert (wrong.returncode, wrong.stdout) == (2, "")
    assert wrong.stderr == (
        f"headwater: {server.url}/metrics answered 401: "
        '{"error":"/metrics needs Authorization: Bearer <HEADWATER_METRICS_TOKEN>","details":[]}\n'
    )
    server.stop()


def test_metrics_need_the_token_when_one_is_set(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "data", {"HEADWATER_METRICS_TOKEN": TOKEN})
    server.start()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        response = httpx.get(server.url + "/metrics", headers=headers)
        assert response.status_code == 401
        assert response.json() == {
            "error": "/metrics needs Authorization: Bearer <HEADWATER_METRICS_TOKEN>",
            "details": [],
        }
    assert scrape(server.url)["headwater_write_queue_events", ()] == 0
    server.stop()


def test_metrics_are_open_without_a_token(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "data")
    server.start()
    assert scrape(server.url, token=None)["headwater_log_head", ()] == 0
    server.stop()


@pytest.mark.parametrize("text", ["short", "has a space in it here"])
def test_a_bad_metrics_token_is_one_line_at_start_that_does_not_show_it(tmp_path: Path, text: str) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path / "data"), env={"HEADWATER_METRICS_TOKEN": text}, check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "headwater: HEADWATER_METRICS_TOKEN (not shown) is not valid: expected at least 16 printable characters with"
        " no spaces, e.g. the output of `openssl rand -hex 16`, or nothing\n"
    )


def test_two_api_processes_add_up_in_one_scrape(
    server_factory: type[ServerProcess], postgres: Postgres, tmp_path: Path
) -> None:
    database = postgres.new_database()
    try:
        env = {"HEADWATER_STORE": postgres.url(database)}
        key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", env=env).stdout.split()[-1]
        # A directory of the test's own, which serve then uses (and leaves) instead of making one.
        shared = tmp_path / "metrics"
        shared.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
        server = server_factory(tmp_path / "data", env, args=("--processes", "2"))
        server.start()
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=90) as client:
            # A new connection each time: the kernel hands them to either process.
            for i in range(40):
                response = client.post(server.url + "/v1/events", json={"type": "t", "subject": f"s{i}"},
                                       headers={"Connection": "close"})  # fmt: skip
                assert response.status_code == 200
        pids = {path.stem.split("_")[-1] for path in shared.glob("*.db")}
        # Both API processes counted (the worker counts nothing here: no trigger, no webhook).
        assert len(pids) == 2, pids
        accepted = ("headwater_events_accepted_total", (("mode", "live"), ("tenant", "t")))
        # The process not scraped writes its counts within FLUSH_SECONDS (headwater.metrics).
        wait_for(lambda: scrape(server.url, token=None).get(accepted) == 40, "both processes' counts", timeout=10)
        samples = [scrape(server.url, token=None) for _ in range(6)]
        assert {s[accepted] for s in samples} == {40}
        server.stop()
    finally:
        postgres.drop_database(database)


def test_held_observations_are_written_as_prometheus_client_would_count_them() -> None:
    """Request and group-commit times are held per bucket and written at a flush (to keep the
    hot path cheap); what a scrape then reads is what `Histogram.observe` per request gives:
    a value on a bucket's bound counts in that bucket, and a value past the last in +Inf."""
    from prometheus_client import REGISTRY, Histogram

    from headwater.metrics import LATENCY_BUCKETS, metrics

    route = "/test/held-observations"
    seconds = [0.0, 0.001, 0.0011, 0.005, 0.2, 30.0, 31.0]
    for value in seconds:
        metrics().request("POST", route, 200, value)
    metrics().flush()
    reference = Histogram("reference_seconds", "the same values, observed directly", buckets=LATENCY_BUCKETS)
    try:
        for value in seconds:
            reference.observe(value)
        labels = {"method": "POST", "route": route, "status": "200"}
        for bound in [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]:
            held = REGISTRY.get_sample_value("headwater_request_seconds_bucket", {**labels, "le": bound})
            assert held == REGISTRY.get_sample_value("reference_seconds_bucket", {"le": bound}), bound
        assert REGISTRY.get_sample_value("headwater_request_seconds_bucket", {**labels, "le": "0.001"}) == 2
        assert REGISTRY.get_sample_value("headwater_request_seconds_bucket", {**labels, "le": "+Inf"}) == 7
        assert REGISTRY.get_sample_value("headwater_request_seconds_count", labels) == 7
        assert REGISTRY.get_sample_value("headwater_request_seconds_sum", labels) == sum(seconds)
    finally:
        REGISTRY.unregister(reference)
