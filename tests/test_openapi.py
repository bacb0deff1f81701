"""The OpenAPI document: valid 3.1, complete (every route of the app), readable at /docs,
and true: schemathesis runs every documented operation against the app, in process, with
every check it has, and finds nothing."""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from headwater.access_log import AccessLogMiddleware
from headwater.app import HotPathDispatcher, create_app
from headwater.config import Settings
from headwater.cors import CorsMiddleware
from headwater.ids import hash_api_key
from headwater.middleware import BodyLimitMiddleware
from headwater.storage import open_store
from headwater.storage.registry import KeyRecord, WebhookEndpoint
from tests.conftest import Api, WorkerThread

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Fixed so CI is deterministic; set them to explore further (e.g. HEADWATER_FUZZ_EXAMPLES=500).
MAX_EXAMPLES = int(os.environ.get("HEADWATER_FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("HEADWATER_FUZZ_SEED", "20260412"))


def served_operations(app: ASGIApp) -> set[tuple[str, str]]:
    """Every (method, path) the app answers: Starlette's routes (HEAD aside) and the hot routes."""
    assert isinstance(app, AccessLogMiddleware)
    cors = app.app
    assert isinstance(cors, CorsMiddleware)
    limit = cors.app
    assert isinstance(limit, BodyLimitMiddleware)
    dispatcher = limit.app
    assert isinstance(dispatcher, HotPathDispatcher)
    found = set(dispatcher.hot)
    starlette: Any = dispatcher.app
    for route in starlette.routes:
        assert isinstance(route, Route), f"{route!r} is not a plain route"
        found |= {(method, route.path_format) for method in route.methods or () if method != "HEAD"}
    return found


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in METHODS}


def test_document_is_valid_openapi_3_1(api: Api) -> None:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.1")
    validate(document)
    # Built once: the same bytes every time.
    assert api.client.get("/openapi.json").content == response.content


def test_every_route_is_documented(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    served = served_operations(api.client.app)
    documented = documented_operations(document)
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert ("POST", "/v1/events") in documented  # the hot route, outside Starlette's router
    native = document["paths"]["/v1/events"]["post"]
    assert [p["name"] for p in native["parameters"] if p["in"] == "query"] == ["wait"]


def test_schemas_come_from_the_models(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("Event", "EventIn", "IngestResult", "ErrorBody", "FieldError", "CloudEvent", "SegmentTrack"):
        assert name in schemas
    assert schemas["EventIn"]["properties"]["type"] == {"type": "string", "minLength": 1, "maxLength": 128}
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyAuth", "basicAuth"}
    errors = document["paths"]["/v1/events"]["post"]["responses"]
    assert errors["503"]["headers"]["Retry-After"]["required"] is True
    assert errors["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_docs_page_names_every_operation(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    response = api.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert (
        "<script" not in page
        and "http://" not in page
        and "https://" not in page.replace("https://spec.openapis.org", "")
    )
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert f'id="{operation["operationId"]}"' in page
            assert f'{method.upper()}</span><span class="path">{path}</span>' in page
            assert operation["summary"].replace("`", "`") in page.replace("&#x27;", "'")


def test_openapi_and_docs_need_no_key(api: Api) -> None:
    assert api.client.get("/openapi.json").status_code == 200
    assert api.client.get("/docs").status_code == 200


# What the fuzzer found, pinned down.


def test_method_not_allowed_lists_every_method_of_the_path(api: Api) -> None:
    key = api.key()
    for method, path, allow in [
        ("PUT", "/v1/events", "GET, HEAD, POST"),  # POST is the hot route, outside Starlette's router
        ("PUT", "/v1/keys", "GET, HEAD, POST"),
        ("POST", "/v1/triggers/trg_x", "DELETE, GET, HEAD, PATCH"),
        ("PUT", "/v1/triggers/test", "POST"),  # its own resource, not a trigger id
    ]:
        response = api.client.request(method, path, headers=api.as_(key))
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allow
        assert response.json()["error"] == "Method Not Allowed"


def test_native_ingest_refuses_an_unknown_wait(api: Api) -> None:
    key = api.key()
    for query in ("wait=false", "wait=", "wait=processed&wait=1"):
        response = api.client.post(f"/v1/events?{query}", headers=api.as_(key), json={"type": "t"})
        assert response.status_code == 400, query
        assert response.json()["details"][0]["field"] == "wait"
    assert api.client.get("/v1/events", headers=api.as_(key)).json()["data"] == []
    # Other parameters are not `wait`, even when their names end in it.
    response = api.client.post("/v1/events?nowait=processed", headers=api.as_(key), json={"type": "t"})
    assert response.status_code == 200 and "triggers_matched" not in response.json()["results"][0]


def test_an_integral_float_is_an_integer(api: Api) -> None:
    """JSON (and JSON Schema's `integer`) has one kind of number: 5.0 is the integer 5."""
    key = api.key()
    trigger = {"name": "t", "event_types": ["a"], "action": {"type": "recommend"}, "priority": 5.0}
    trigger["window"] = {"within": "1h", "count_at_least": 2e0}
    response = api.client.post("/v1/triggers", headers=api.as_(key), json=trigger)
    assert response.status_code == 201, response.text
    assert response.json()["priority"] == 5 and response.json()["window"]["count_at_least"] == 2
    response = api.client.post("/v1/triggers", headers=api.as_(key), json={**trigger, "priority": 5.5})
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "priority"
    event = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    headers = {**api.as_(key), "Content-Type": "application/cloudevents+json"}
    assert api.client.post("/v1/cloudevents", headers=headers, json={**event, "attempt": 3.0}).status_code == 202
    refused = api.client.post("/v1/cloudevents", headers=headers, json={**event, "id": "2", "attempt": 3.5})
    assert refused.status_code == 400
    assert refused.json()["results"][0]["errors"][0]["field"] == "attempt"


def test_a_webhook_host_is_a_host_name_or_an_address(api: Api) -> None:
    key = api.key()
    for url, status in [
        ("https://hooks.example.com/x", 201),
        ("HTTP://Hooks.Example.COM:8443/x?y=*", 201),
        ("https://8.8.8.8/", 201),
        ("https://hooks*.example.com/", 400),
        ("https://a..example.com/", 400),
        ("https://" + "a" * 64 + ".example.com/", 400),
    ]:
        response = api.client.post(
            "/v1/webhooks", headers=api.as_(key), json={"url": url, "subscriptions": ["event.*"]}
        )
        assert response.status_code == status, (url, response.text)


def test_position_cursors_are_ascii_digits(api: Api) -> None:
    key = api.key()
    for path in ("/v1/actions", "/v1/deliveries", "/v1/dead-letters"):
        for cursor in ("²_0_1", "1_١_1", "9" * 20 + "_0_1", "1_2", "1_2_3_4", "_1_2", "1__2"):
            response = api.client.get(path, params={"cursor": cursor}, headers=api.as_(key))
            assert response.status_code == 400, (path, cursor)
            assert response.json()["details"][0]["field"] == "cursor"
        assert api.client.get(path, params={"cursor": "9" * 18 + "_0_1"}, headers=api.as_(key)).status_code == 200


def test_range_bounds_past_either_end_of_time(api: Api) -> None:
    key = api.key()
    api.client.post("/v1/events", headers=api.as_(key), json={"type": "t", "time": "2026-04-12T10:00:00Z"})
    for path in ("/v1/events", "/api/openapi/v1/data/events"):
        for params, found in [
            ({"to": "9999-12-31"}, 1),
            ({"from": "0001-01-01T00:00:00+01:00"}, 1),
            ({"to": "0001-01-01T00:00:00+01:00"}, 0),
            ({"from": "9999-12-31T23:00:00-05:00"}, 0),
        ]:
            response = api.client.get(path, params=params, headers=api.as_(key))
            assert response.status_code == 200, (path, params, response.text)
            body = response.json()
            assert len(body["data"] if "next_cursor" in body else body["data"]["events"]) == found
    quarantine = api.client.get("/v1/quarantine", params={"to": "9999-12-31"}, headers=api.as_(key))
    assert quarantine.status_code == 200


def test_event_cursors_are_positions(api: Api) -> None:
    """`<µs since the epoch>_<seq>`: every cursor of that form is a position, however far out."""
    key = api.key()
    for cursor, status in [("1776000000000000_5", 200), ("-999999999999999999_1", 200), ("1_", 400), ("MTox", 400)]:
        response = api.client.get("/v1/events", params={"cursor": cursor}, headers=api.as_(key))
        assert response.status_code == status, cursor


# Schemathesis, over every documented operation. The schema must exist when the module is
# collected (so each operation is its own test), so the app is made then; it starts (and
# touches its data dir) only on the first request, after the fixture below made its key.

FUZZ_DIR = Path(tempfile.mkdtemp(prefix="headwater-openapi-"))
FUZZ_SETTINGS = replace(
    Settings(),
    data_dir=FUZZ_DIR / "data",
    # No delivery worker: the webhook endpoints the fuzzer registers are never called.
    webhook_worker=False,
    sync_timeout=5.0,
)
FUZZ_KEY = "hw_live_" + secrets.token_urlsafe(32)
FUZZ_ENDPOINT = "whe_fuzz"


class FreshAppPerLifespan:
    """Schemathesis stops an ASGI app's lifespan after each test and starts it again for the
    next; a Headwater app runs once, so each start makes a new one over the same data."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self.app is None:
            self.app = create_app(self.settings)
        await self.app(scope, receive, send)


FUZZ_APP = FreshAppPerLifespan(FUZZ_SETTINGS)
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        # Each scheme an operation accepts gets the same admin key of a fresh tenant.
        "auth": {
            "openapi": {
                "bearerAuth": {"bearer": FUZZ_KEY},
                "apiKeyAuth": {"api_key": FUZZ_KEY},
                "basicAuth": {"username": FUZZ_KEY, "password": ""},
            }
        },
    }
)


def _fuzz_schema() -> Any:
    with TestClient(create_app(replace(FUZZ_SETTINGS, data_dir=FUZZ_DIR / "document"))) as client:
        document = client.get("/openapi.json").json()
    loaded = schemathesis.openapi.from_dict(document, config=CONFIG)
    loaded.app = FUZZ_APP
    return loaded


async def _add_fuzz_key_and_endpoint() -> None:
    store = open_store(FUZZ_SETTINGS)
    await store.start()
    try:
        await store.registry.ensure_tenant("fuzz")
        now = datetime.now(UTC)
        record = KeyRecord("key_fuzz", "fuzz", "admin", "live", FUZZ_KEY[:12], "fuzz", now)
        await store.registry.add_key(record, hash_api_key(FUZZ_KEY))
        url, secret = "https://hooks.example.com/fuzz", "whsec_" + "A" * 43 + "="
        await store.registry.create_webhook(
            WebhookEndpoint(FUZZ_ENDPOINT, "fuzz", "live", url, None, [], secret, [], True, None, now, now)
        )
    finally:
        await store.close()


# Not fixtures: schemathesis's generated items set fixtures up and tear them down one by one,
# and the app must live across them. Schemathesis stops its lifespan at exit, then this goes.
schema = _fuzz_schema()


@schema.hook
def map_body(ctx: Any, body: Any) -> Any:
    """What the document cannot describe: which credentials and endpoints exist.

    Without Segment's `writeKey` when it is a string: beside the header's key any other key is
    a 400 (two keys), and the fuzz key would authenticate the requests the ignored-auth check
    sends without one (tests/test_credentials.py covers it). A key of the wrong type stays, to
    be refused. A trigger's `webhook` action names the fuzz
    tenant's endpoint, as it must (else 400), as the requests carry the fuzz tenant's key.
    """
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("writeKey"), str):  # a schema-valid key: a negative case keeps its bad one
        body = {name: value for name, value in body.items() if name != "writeKey"}
    action = body.get("action")
    if isinstance(action, dict) and action.get("type") == "webhook" and isinstance(action.get("config"), dict):
        named = action["config"].get("endpoint_id")
        if isinstance(named, str) and 1 <= len(named) <= 256:  # a schema-valid name: not a negative case
            body = {**body, "action": {**action, "config": {**action["config"], "endpoint_id": FUZZ_ENDPOINT}}}
    return body


asyncio.run(_add_fuzz_key_and_endpoint())
atexit.register(shutil.rmtree, FUZZ_DIR, ignore_errors=True)
# The worker the sync routes wait for, for as long as this module's tests run.
FUZZ_WORKER = WorkerThread(FUZZ_SETTINGS).__enter__()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_fuzz_worker() -> Iterator[None]:
    yield
    FUZZ_WORKER.__exit__()


# An endless stream cannot be fuzzed by a client that reads each whole response: its bad input
# (offsets, headers, keys) is tested over HTTP in tests/test_live.py.
@schema.exclude(path="/v1/events/live").parametrize()
def test_schemathesis(case: schemathesis.Case) -> None:
    """Every check schemathesis has (not_a_server_error, status_code_conformance,
    content_type_conformance, response_schema_conformance, response_headers_conformance,
    positive/negative data, missing headers, unsupported methods, ignored auth, ...)."""
    case.call_and_validate()
