"""Rate limits: a token bucket per key, counted in events, with the tenant's and the server's
defaults; over the limit a 429 with Retry-After and RateLimit-* headers, and nothing stored.

Buckets refill at 0.01 events/s here: one event per 100 s, so nothing a test does refills
one and the figures in the headers are exact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from tests.conftest import Api, ServerProcess, WorkerThread, run_cli, server_args, store_args
from tests.servers import Postgres, Redis

SLOW = {"per_second": 0.01, "burst": 5}


def events(count: int, prefix: str = "e") -> dict[str, Any]:
    return {"events": [{"type": "view", "idempotency_key": f"{prefix}{i}"} for i in range(count)]}


def stored(api: Api, key: str) -> int:
    return len(api.client.get("/v1/events", params={"limit": 1000}, headers=api.as_(key)).json()["data"])


def new_key(api: Api, admin: str, limit: dict[str, Any] | None = None) -> tuple[str, str]:
    """(id, key) of a new ingest key, with `limit` as its own rate limit."""
    body: dict[str, Any] = {"role": "ingest"} | ({"rate_limit": limit} if limit else {})
    response = api.client.post("/v1/keys", json=body, headers=api.as_(admin))
    assert response.status_code == 201, response.text
    assert response.json()["rate_limit"] == limit
    return str(response.json()["id"]), str(response.json()["key"])


def limited_key(api: Api, admin: str, limit: dict[str, Any] | None = None) -> str:
    return new_key(api, admin, limit)[1]


def assert_limited(response: httpx.Response, burst: int, retry_after: int, reset: int, remaining: int = 0) -> None:
    assert response.status_code == 429, response.text
    message = f"rate limit of 0.01 events/s (burst {burst}) exceeded: retry in {retry_after} s"
    assert response.json() == {"error": message, "details": [{"field": "", "code": "rate_limited", "message": message}]}
    names = ("retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
    assert [response.headers[name] for name in names] == [str(n) for n in (retry_after, burst, remaining, reset)]


def test_a_keys_own_limit_counts_events_and_refuses_with_429_storing_nothing(api: Api) -> None:
    admin = api.key()
    key = limited_key(api, admin, SLOW)
    reader = api.key(role="viewer")
    first = api.client.post("/v1/events", json=events(3), headers=api.as_(key))
    assert (first.status_code, first.json()["accepted"]) == (200, 3)
    # Two tokens left: a batch of three is refused whole, though it is one request.
    refused = api.client.post("/v1/events", json=events(3, "r"), headers=api.as_(key))
    assert_limited(refused, burst=5, retry_after=100, reset=300, remaining=2)
    assert stored(api, reader) == 3
    # The bucket could hold two, but the client was told to wait 100 s: until then, every
    # request of the key is refused, before its body is read.
    two = api.client.post("/v1/events", json=events(2, "f"), headers=api.as_(key))
    assert_limited(two, burst=5, retry_after=100, reset=300, remaining=2)
    assert stored(api, reader) == 3
    # Other keys of the tenant have buckets of their own.
    other = api.client.post("/v1/events", json=events(3, "o"), headers=api.as_(admin))
    assert other.json()["accepted"] == 3


def test_an_empty_bucket_refuses_before_the_body_is_read_into_events(api: Api) -> None:
    """Once this process has seen the bucket empty, a request is refused without its body being
    split: even a body that is not JSON gets the 429, not the 400 it would get with tokens left."""
    key = limited_key(api, api.key(), SLOW)
    garbage = {"content": b"{not json", "headers": {**api.as_(key), "Content-Type": "application/json"}}
    assert api.client.post("/v1/events", **garbage).status_code == 400  # tokens left: read, and refused as JSON
    assert api.client.post("/v1/events", json=events(5), headers=api.as_(key)).json()["accepted"] == 5
    assert_limited(api.client.post("/v1/events", **garbage), burst=5, retry_after=100, reset=500)
    assert_limited(api.client.post("/v1/events", json=events(1, "x"), headers=api.as_(key)), 5, 100, 500)


def test_a_refused_key_is_refused_before_its_body_until_its_retry_after_has_passed(api: Api) -> None:
    """After a 429 that said to wait 3 s, the key is refused for 3 s, though its bucket holds
    enough for a smaller request meanwhile, and even a body that is not JSON gets the 429 (the
    body is not read); once the wait has passed, its requests are served again."""
    reader = api.key(role="viewer")
    key = limited_key(api, api.key(), {"per_second": 2, "burst": 10})
    assert api.client.post("/v1/events", json=events(7), headers=api.as_(key)).json()["accepted"] == 7
    refused = api.client.post("/v1/events", json=events(8, "r"), headers=api.as_(key))
    told = time.monotonic()
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "3"  # five events short, at 2 a second
    time.sleep(1.0)  # five tokens now: a small request would fit, but the wait has not passed
    garbage = {"content": b"{not json", "headers": {**api.as_(key), "Content-Type": "application/json"}}
    for response in (
        api.client.post("/v1/events", json=events(1, "x"), headers=api.as_(key)),
        api.client.post("/v1/events", **garbage),
    ):
        assert response.status_code == 429, response.text
        assert response.json()["details"][0]["code"] == "rate_limited"
        assert 1 <= int(response.headers["retry-after"]) <= 2
        assert int(response.headers["ratelimit-remaining"]) >= 5
    assert stored(api, reader) == 7
    time.sleep(max(0.0, told + 3.1 - time.monotonic()))
    assert api.client.post("/v1/events", json=events(5, "late"), headers=api.as_(key)).json()["accepted"] == 5
    assert stored(api, reader) == 12


def test_a_request_of_more_events_than_the_burst_is_413(api: Api) -> None:
    key = limited_key(api, api.key(), SLOW)
    response = api.client.post("/v1/events", json=events(6), headers=api.as_(key))
    message = "a request of 6 events exceeds this key's rate-limit burst of 5: send fewer"
    assert response.status_code == 413
    assert response.json() == {
        "error": message,
        "details": [{"field": "", "code": "rate_limit_burst", "message": message}],
    }
    assert api.client.post("/v1/events", json=events(5), headers=api.as_(key)).json()["accepted"] == 5


def test_dialects_are_limited_through_the_one_pipeline(api: Api) -> None:
    key = limited_key(api, api.key(), {"per_second": 0.01, "burst": 1})
    track = {"type": "track", "event": "Viewed", "userId": "u1", "messageId": "m1"}
    assert api.client.post("/v1/track", json=track, headers=api.as_(key)).status_code == 200
    again = api.client.post("/v1/track", json={**track, "messageId": "m2"}, headers=api.as_(key))
    assert again.status_code == 429 and again.headers["retry-after"] == "100"


def test_the_tenant_default_applies_to_keys_without_their_own(api: Api) -> None:
    admin = api.key()
    plain_id, plain = new_key(api, admin)
    own_id, own = new_key(api, admin, {"per_second": 50, "burst": 100})
    put = api.client.put("/v1/settings/rate-limit", json={"rate_limit": SLOW}, headers=api.as_(admin))
    assert put.json() == {"rate_limit": SLOW, "effective": SLOW, "source": "tenant"}
    assert api.client.get("/v1/settings/rate-limit", headers=api.as_(admin)).json() == put.json()
    assert api.client.post("/v1/events", json=events(5), headers=api.as_(plain)).status_code == 200
    assert_limited(api.client.post("/v1/events", json=events(1, "x"), headers=api.as_(plain)), 5, 100, 500)
    assert api.client.post("/v1/events", json=events(20, "y"), headers=api.as_(own)).status_code == 200
    roomy = {"per_second": 50.0, "burst": 100}
    assert api.client.get(f"/v1/keys/{own_id}/rate-limit", headers=api.as_(admin)).json() == {
        "key_id": own_id,
        "rate_limit": roomy,
        "effective": roomy,
        "source": "key",
    }
    assert api.client.get(f"/v1/keys/{plain_id}/rate-limit", headers=api.as_(admin)).json() == {
        "key_id": plain_id,
        "rate_limit": None,
        "effective": SLOW,
        "source": "tenant",
    }
    removed = api.client.put("/v1/settings/rate-limit", json={"rate_limit": None}, headers=api.as_(admin))
    assert removed.json() == {"rate_limit": None, "effective": None, "source": None}
    assert api.client.post("/v1/events", json=events(1, "z"), headers=api.as_(plain)).status_code == 200


def test_a_keys_limit_is_set_changed_and_removed(api: Api) -> None:
    admin = api.key()
    created = api.client.post("/v1/keys", json={"role": "ingest"}, headers=api.as_(admin)).json()
    key_id, key = created["id"], created["key"]
    url = f"/v1/keys/{key_id}/rate-limit"
    assert api.client.get(url, headers=api.as_(admin)).json() == {
        "key_id": key_id,
        "rate_limit": None,
        "effective": None,
        "source": None,
    }
    put = api.client.put(url, json={"rate_limit": {"per_second": 0.01, "burst": 1}}, headers=api.as_(admin))
    limit = {"per_second": 0.01, "burst": 1}
    assert put.json() == {"key_id": key_id, "rate_limit": limit, "effective": limit, "source": "key"}
    assert api.client.post("/v1/events", json={"type": "a"}, headers=api.as_(key)).status_code == 200
    assert api.client.post("/v1/events", json={"type": "b"}, headers=api.as_(key)).status_code == 429
    assert api.client.put(url, json={"rate_limit": None}, headers=api.as_(admin)).json()["source"] is None
    assert api.client.post("/v1/events", json={"type": "c"}, headers=api.as_(key)).status_code == 200


MISSING = object()  # no `rate_limit` in the body at all


@pytest.mark.parametrize(
    ("limit", "field", "code", "message"),
    [
        ({"per_second": 0, "burst": 5}, ".per_second", "invalid_type", "Expected `float` > 0.0"),
        ({"per_second": -1, "burst": 5}, ".per_second", "invalid_type", "Expected `float` > 0.0"),
        ({"per_second": 2e6, "burst": 5}, ".per_second", "invalid_type", "Expected `float` <= 1000000.0"),
        ({"per_second": "9", "burst": 5}, ".per_second", "invalid_type", "Expected `float`, got `str`"),
        ({"per_second": 1, "burst": 0}, ".burst", "invalid_type", "Expected `int` >= 1"),
        ({"per_second": 1, "burst": 2.5}, ".burst", "invalid_type", "Expected `int`, got `float`"),
        ({"per_second": 1}, ".burst", "required", "Object missing required field `burst`"),
        ({"per_second": 1, "burst": 1, "x": 1}, ".x", "unknown_field", "Object contains unknown field `x`"),
        (MISSING, "", "required", "Object missing required field `rate_limit`"),
        ([1, 2], "", "invalid_type", "Expected `object | null`, got `array`"),
    ],
)
def test_bad_limits_are_400_and_change_nothing(api: Api, limit: Any, field: str, code: str, message: str) -> None:
    admin = api.key()
    body = {} if limit is MISSING else {"rate_limit": limit}
    response = api.client.put("/v1/settings/rate-limit", json=body, headers=api.as_(admin))
    detail = {"field": "rate_limit" + field, "code": code, "message": message}
    expected = {"error": "request body is not valid", "details": [detail]}
    assert (response.status_code, response.json()) == (400, expected)
    key = api.client.post("/v1/keys", json={"role": "ingest", **body}, headers=api.as_(admin))
    assert key.status_code == (201 if body == {} else 400)
    if body:
        assert key.json() == expected
    assert api.client.get("/v1/settings/rate-limit", headers=api.as_(admin)).json()["rate_limit"] is None


def test_only_admins_of_the_keys_tenant_and_mode_see_or_set_limits(api: Api) -> None:
    admin = api.key()
    key_id = api.client.post("/v1/keys", json={"role": "ingest"}, headers=api.as_(admin)).json()["id"]
    body = {"rate_limit": {"per_second": 1, "burst": 1}}
    url = f"/v1/keys/{key_id}/rate-limit"
    for role in ("ingest", "viewer", "editor"):
        other = api.key(role=role)
        assert api.client.put(url, json=body, headers=api.as_(other)).status_code == 403
        assert api.client.put("/v1/settings/rate-limit", json=body, headers=api.as_(other)).status_code == 403
    for stranger in (api.key("other"), api.key(mode="test")):
        response = api.client.put(url, json=body, headers=api.as_(stranger))
        assert response.json() == {"error": "no such key", "details": []}
        assert response.status_code == 404
    assert api.client.get("/v1/keys/key_nope/rate-limit", headers=api.as_(admin)).status_code == 404
    assert api.client.get(url, headers=api.as_(admin)).json()["rate_limit"] is None


@pytest.fixture
def server_default(settings: Settings) -> Iterator[Api]:
    limited = replace(settings, rate_limit=(0.01, 2))
    with WorkerThread(limited), TestClient(create_app(limited), raise_server_exceptions=False) as client:
        yield Api(client, limited)


def test_the_server_default_applies_below_the_tenants(server_default: Api) -> None:
    api = server_default
    admin = api.key()
    assert api.client.get("/v1/settings/rate-limit", headers=api.as_(admin)).json() == {
        "rate_limit": None,
        "effective": {"per_second": 0.01, "burst": 2},
        "source": "server",
    }
    assert api.client.post("/v1/events", json=events(2), headers=api.as_(admin)).status_code == 200
    response = api.client.post("/v1/events", json=events(1, "x"), headers=api.as_(admin))
    assert response.status_code == 429 and response.headers["ratelimit-limit"] == "2"
    roomy = {"rate_limit": {"per_second": 100, "burst": 100}}
    assert api.client.put("/v1/settings/rate-limit", json=roomy, headers=api.as_(admin)).status_code == 200
    assert api.client.post("/v1/events", json=events(50, "y"), headers=api.as_(admin)).status_code == 200


@pytest.mark.parametrize("setting", ["0", "-1", "abc", "1:0", "nan", "inf", "1e7", "5:x", "2:20000000"])
def test_a_bad_server_default_stops_the_server_with_one_line(tmp_path: Path, setting: str) -> None:
    done = run_cli("serve", "--data-dir", str(tmp_path), env={"HEADWATER_RATE_LIMIT": setting}, check=False)
    assert done.returncode != 0
    assert f"HEADWATER_RATE_LIMIT={setting!r} is not valid" in done.stderr, done.stderr


@pytest.fixture(params=["postgres", "postgres+redis"])
def server_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A server store of the test's own (SQLite serves from one process and keeps its buckets in
    memory: sharing them is a server store's case), with the bus or without."""
    postgres: Postgres = request.getfixturevalue("postgres")
    database = postgres.new_database()
    settings = replace(Settings(), data_dir=tmp_path / "data", store=postgres.url(database))
    if request.param == "postgres+redis":
        bus: Redis = request.getfixturevalue("redis")
        settings = replace(settings, bus=bus.url)
    try:
        yield settings
    finally:
        postgres.drop_database(database)


def test_api_processes_share_the_buckets(server_store: Settings, server_factory: type[ServerProcess]) -> None:
    """Two API processes on one port: 20 single events on 20 connections, which the two share
    between them, and exactly the burst of them is accepted."""
    settings = server_store
    created = run_cli("keys", "create", "--tenant", "t", "--role", "admin", *store_args(settings)).stdout.split()[-1]
    server = server_factory(settings.data_dir, args=("--processes", "2", *server_args(settings)))
    server.start()
    try:
        headers = {"Authorization": f"Bearer {created}"}
        limit = {"rate_limit": {"per_second": 0.01, "burst": 10}}
        assert httpx.put(server.url + "/v1/settings/rate-limit", json=limit, headers=headers).status_code == 200
        statuses = []
        for i in range(20):
            with httpx.Client(headers=headers) as client:  # a new connection each: either process
                statuses.append(client.post(server.url + "/v1/events", json={"type": "v", "idempotency_key": str(i)}))
        assert sorted(r.status_code for r in statuses) == [200] * 10 + [429] * 10
    finally:
        server.stop()
