"""Request ids and the access log as JSON (`--log-format json`), read from a real `headwater serve`:
every line one JSON object, a request's naming its route as declared, never the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, ServerProcess, run_cli

GENERATED = re.compile(r"req_[0-9a-f]{32}")


def serve_and_read(
    server_factory: type[ServerProcess], tmp_path: Path, log_format: str
) -> tuple[str, list[str], list[str]]:
    """(an admin key of tenant acme, the ids the responses to REQUESTS carried, the lines the server
    printed) after REQUESTS."""
    data_dir = tmp_path / "data"
    created = run_cli("keys", "create", "--tenant", "acme", "--role", "admin", "--data-dir", str(data_dir))
    key = created.stdout.strip().splitlines()[-1]
    server = server_factory(data_dir, args=("--no-worker", "--log-level", "info", "--log-format", log_format))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/healthz", headers={"X-Request-Id": "probe"}).status_code == 200  # start() asked too
            ids = []
            for method, path, headers, status in REQUESTS:
                response = client.request(method, path, headers={**headers, "Authorization": f"Bearer {key}"})
                assert response.status_code == status, response.text
                ids.append(response.headers["x-request-id"])
    finally:
        server.stop()
    assert server.proc is not None and server.proc.stdout is not None
    with server.proc.stdout:
        output = server.proc.stdout.read().decode()
    assert key not in output and key[12:] not in output
    check_ids(ids)
    return key, ids, output.splitlines()


REQUESTS: list[tuple[str, str, dict[str, str], int]] = [
    ("GET", "/healthz", {"X-Request-Id": "checkout-7f3a.1"}, 200),
    ("GET", "/v1/webhooks/whe_nope", {}, 404),
    ("GET", "/v1/webhooks/whe_other?x=1", {"X-Request-Id": "has space"}, 404),
    ("GET", "/nowhere", {"X-Request-Id": "a" * 129}, 404),
]


def check_ids(ids: list[str]) -> None:
    """A usable incoming id is echoed; none, or one that could break a log line, is replaced."""
    assert ids[0] == "checkout-7f3a.1"
    assert all(GENERATED.fullmatch(i) for i in ids[1:]), ids
    assert len(set(ids)) == len(ids)


def test_the_json_access_log_is_one_object_per_line(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    key, ids, lines = serve_and_read(server_factory, tmp_path, "json")
    listening = next(i for i, line in enumerate(lines) if line.startswith("Headwater listening on "))
    records = [json.loads(line) for line in lines[listening + 1 :]]  # every line: no exception
    access = [r for r in records if r["logger"] == "headwater.access" and r["request_id"] != "probe"]
    # start()'s own health checks come first.
    access = [r for r in access if not (r["route"] == "/healthz" and GENERATED.fullmatch(r["request_id"]))]
    for record in access:
        assert isinstance(record.pop("time"), str) and isinstance(record.pop("latency_ms"), float)
    assert [record.pop("request_id") for record in access] == ids
    caller: dict[str, Any] = {"tenant": "acme", "key": key[:12]}
    nobody: dict[str, Any] = {"tenant": None, "key": None}
    common = {"level": "info", "logger": "headwater.access", "method": "GET"}
    assert access == [
        common | {"route": "/healthz", "status": 200} | nobody,
        common | {"route": "/v1/webhooks/{endpoint_id}", "status": 404} | caller,
        common | {"route": "/v1/webhooks/{endpoint_id}", "status": 404} | caller,
        common | {"route": None, "status": 404} | nobody,
    ]
    # uvicorn's own lines are JSON too.
    assert {"level": "info", "logger": "uvicorn.error", "message": "Application startup complete."} in [
        {k: v for k, v in r.items() if k != "time"} for r in records
    ]


TEXT_LINE = re.compile(r"^INFO: +(\S+) (\S+) (\d{3}) \d+\.\dms tenant=(\S+) key=(\S+) request=(\S+)$")


def test_the_text_access_log_names_the_request_id(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    key, ids, lines = serve_and_read(server_factory, tmp_path, "text")
    access = [m.groups() for m in map(TEXT_LINE.match, lines) if m]
    assert access[-4:] == [
        ("GET", "/healthz", "200", "-", "-", ids[0]),
        ("GET", "/v1/webhooks/whe_nope", "404", "acme", key[:12], ids[1]),
        ("GET", "/v1/webhooks/whe_other", "404", "acme", key[:12], ids[2]),
        ("GET", "/nowhere", "404", "-", "-", ids[3]),
    ]


def test_every_response_carries_a_request_id_whatever_the_log_level(api: Api) -> None:
    """Off at the default level, the access log still hands out ids: a client's report can name one."""
    given = api.client.get("/healthz", headers={"X-Request-Id": "from-the-client"})
    assert given.headers["x-request-id"] == "from-the-client"
    made = api.client.post("/v1/events", json={"type": "a"}, headers=api.as_(api.key()))
    assert made.status_code == 200 and GENERATED.fullmatch(made.headers["x-request-id"])
    refused = api.client.post("/v1/events", content=b"{", headers={"X-Request-Id": "bad\x7f"})
    assert refused.status_code == 401 and GENERATED.fullmatch(refused.headers["x-request-id"])


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", 'quote"d', "new\\nline", "tab\tbed", "ünï"])
def test_an_unusable_request_id_is_replaced(api: Api, value: str) -> None:
    response = api.client.get("/healthz", headers={"X-Request-Id": value.encode("utf-8")})
    assert GENERATED.fullmatch(response.headers["x-request-id"])
