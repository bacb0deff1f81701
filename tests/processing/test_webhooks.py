"""Webhook endpoints and delivery, against a real HTTP receiver on 127.0.0.1 that verifies
every request with `standardwebhooks`: signing, retries, Retry-After, 410, dead letters and
manual retry, secret rotation, redirects, timeouts, the SSRF guard, and the API around them.

The delivery worker runs on the test's own event loop with a clock the tests move
(`Hooks.advance`), so retry schedules of minutes take no time."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings, parse_schedule
from headwater.ids import delivery_id
from headwater.processing.definitions import Definitions
from headwater.processing.webhooks import (
    DeliveryWorker,
    check_url,
    forbidden_reason,
    literal_address,
    parse_retry_after,
)
from headwater.storage import open_store
from headwater.storage.base import Store
from headwater.storage.effects import NewDelivery
from tests.conftest import Api, WorkerThread, make_key

# Receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def verify(self, secret: str) -> Any:
        return Webhook(secret).verify(self.body, self.headers)

    @property
    def timestamp(self) -> int:
        return int(self.headers["webhook-timestamp"])


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """A real HTTP server on 127.0.0.1: records every request, answers from a per-path script
    (200 once the script is used up)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, deque[Reply]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    script = receiver.scripts.get(self.path)
                    reply = script.popleft() if script else Reply()
                time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops connections under concurrent sends

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, *replies: Reply | int) -> None:
        self.scripts[path] = deque(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


# The API, a store and a worker on a clock the test moves


class Clock:
    """Real time plus an offset the test advances: timestamps stay within the 5 minutes
    `standardwebhooks` tolerates as long as a test moves it by less than that."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class Hooks:
    client: TestClient
    settings: Settings
    key: str
    runner: asyncio.Runner
    store: Store
    clock: Clock
    receiver: Receiver
    workers: list[DeliveryWorker] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def worker(self, **settings: Any) -> DeliveryWorker:
        kw = {k: settings.pop(k) for k in ("network_backend", "resolve") if k in settings}
        worker = DeliveryWorker(self.store, replace(self.settings, **settings), self.clock, jitter=0, **kw)
        self.workers.append(worker)
        return worker

    def deliver(self, worker: DeliveryWorker | None = None) -> int:
        """One pass of the worker: send what is due now and wait for it."""
        return self.runner.run((worker or self.worker()).run_once())

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def endpoint(self, path: str = "/hook", subscriptions: list[str] | None = None, url: str | None = None) -> Any:
        topics = ["action.*"] if subscriptions is None else subscriptions
        body = {"url": url or self.receiver.url(path), "subscriptions": topics}
        response = self.client.post("/v1/webhooks", json=body, headers=self.auth)
        assert response.status_code == 201, response.text
        return response.json()

    def enqueue(self, topic: str, key: str, endpoint_id: str | None = None, data: Any = None) -> list[str]:
        """As the trigger engine enqueues: for every enabled endpoint of the tenant subscribed to
        the topic, or for `endpoint_id` alone whatever it subscribes to (when it is enabled),
        with ids from (endpoint, message key)."""
        at = self.clock()
        payload = json.dumps({"type": topic, "timestamp": at.isoformat(), "data": data or {"n": 1}}).encode()

        async def run() -> list[str]:
            definitions = Definitions(self.store.registry)
            await definitions.refresh()
            scope = (await definitions.for_scopes([("acme", "live")]))[("acme", "live")]
            if endpoint_id is None:
                targets = scope.subscribers(topic)
            else:
                targets = [endpoint_id] if endpoint_id in scope.endpoints else []
            rows = [NewDelivery(delivery_id(t, key), "acme", "live", t, topic, key, payload, at) for t in targets]
            await self.store.derived.enqueue(rows)
            return [row.id for row in rows]

        return self.runner.run(run())

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    def delivery(self, delivery_id: str) -> Any:
        return self.get(f"/v1/deliveries/{delivery_id}")

    def attempts(self, endpoint_id: str) -> list[Any]:
        return list(self.get(f"/v1/webhooks/{endpoint_id}/attempts")["data"])


def _settings(settings: Settings, **changes: Any) -> Settings:
    defaults: dict[str, Any] = {
        "allow_private_webhooks": True,
        "webhook_worker": False,
        "webhook_retry_schedule": (0, 5, 300),
        "webhook_timeout": 2.0,
    }
    return replace(settings, **(defaults | changes))


@pytest.fixture
def hooks(settings: Settings, receiver: Receiver) -> Iterator[Hooks]:
    settings = _settings(settings)
    key = make_key(settings, "acme", "editor")
    runner = asyncio.Runner()
    store = open_store(settings)
    runner.run(store.start())
    # A worker for triggers and events; deliveries are this test's own `DeliveryWorker` on its clock.
    with WorkerThread(settings), TestClient(create_app(settings), raise_server_exceptions=False) as client:
        hooks = Hooks(client, settings, key, runner, store, Clock(), receiver)
        try:
            yield hooks
        finally:
            for worker in hooks.workers:
                runner.run(worker.stop())
            runner.run(store.close())
            runner.close()


def recent(timestamp: str | None) -> bool:
    assert timestamp is not None and timestamp.endswith("Z")
    return abs(datetime.now(UTC) - datetime.fromisoformat(timestamp)) < timedelta(minutes=10)


# Endpoints through the API

NOT_A_TOPIC = "is not a topic such as action.recommend, event.purchase or action.*"


def new_endpoint(created: dict[str, Any], url: str, subscriptions: list[str]) -> dict[str, Any]:
    """The whole body of a newly registered endpoint; what the server picks is taken from `created`."""
    return {
        "id": created["id"],
        "url": url,
        "description": None,
        "subscriptions": subscriptions,
        "mode": "live",
        "enabled": True,
        "disabled_reason": None,
        "previous_secret_expires_at": None,
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
        "secret": created["secret"],
    }


def test_create_shows_the_secret_once_and_crud(hooks: Hooks) -> None:
    url = hooks.receiver.url("/hook")
    response = hooks.client.post(
        "/v1/webhooks",
        json={"url": url, "subscriptions": ["action.recommend", "event.purchase", "action.recommend"]},
        headers=hooks.auth,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["secret"]
    assert created == new_endpoint(created, url, ["action.recommend", "event.purchase"])
    assert created["id"].startswith("whe_") and recent(created["created_at"])
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    view = {k: v for k, v in created.items() if k != "secret"}

    listing = hooks.client.get("/v1/webhooks", headers=hooks.auth)
    assert listing.json() == {"data": [view]}
    assert secret[6:] not in listing.text
    assert hooks.get(f"/v1/webhooks/{created['id']}") == view

    response = hooks.client.patch(
        f"/v1/webhooks/{created['id']}",
        json={"subscriptions": ["event.*"], "description": "crm", "enabled": False},
        headers=hooks.auth,
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched == view | {
        "subscriptions": ["event.*"],
        "description": "crm",
        "enabled": False,
        "disabled_reason": "disabled through the API",
        "updated_at": patched["updated_at"],
    }
    assert patched["updated_at"] >= view["updated_at"]
    response = hooks.client.patch(f"/v1/webhooks/{created['id']}", json={"enabled": True}, headers=hooks.auth)
    assert response.json() == patched | {
        "enabled": True,
        "disabled_reason": None,
        "updated_at": response.json()["updated_at"],
    }

    response = hooks.client.delete(f"/v1/webhooks/{created['id']}", headers=hooks.auth)
    assert response.status_code == 200
    assert response.json()["id"] == created["id"]
    assert hooks.get("/v1/webhooks") == {"data": []}
    for call in (hooks.client.get, hooks.client.delete):
        response = call(f"/v1/webhooks/{created['id']}", headers=hooks.auth)
        assert (response.status_code, response.json()) == (404, {"error": "no such webhook endpoint", "details": []})


# What a refusal by the SSRF guard adds: how a local set-up lifts it.
ALLOW_PRIVATE = (
    "; start the server with HEADWATER_ALLOW_PRIVATE_WEBHOOKS=1 to allow private addresses (local development)"
)


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        ({"url": "ftp://example.com/x"}, "url", "url must start with http:// or https://"),
        ({"url": "https://user:pw@example.com/x"}, "url", "url must not contain credentials"),
        ({"url": "https://example.com/" + "a" * 2048}, "url", "url is longer than 2048 characters"),
        ({"url": "https:///nohost"}, "url", "url has no host"),
        ({"url": "https://example.com:99999/"}, "url", "url is not valid: Port out of range 0-65535"),
        ({"url": "http://127.0.0.1:8000/"}, "url", "url points to a loopback address" + ALLOW_PRIVATE),
        ({"url": "http://10.1.2.3/"}, "url", "url points to a private address" + ALLOW_PRIVATE),
        ({"url": "http://169.254.169.254/x"}, "url", "url points to a cloud metadata address" + ALLOW_PRIVATE),
        ({"url": "http://[::1]/"}, "url", "url points to a loopback address" + ALLOW_PRIVATE),
        ({"url": "http://[fd00:ec2::254]/"}, "url", "url points to a cloud metadata address" + ALLOW_PRIVATE),
        ({"url": "http://localhost:8000/"}, "url", "url points to this machine" + ALLOW_PRIVATE),
        ({"subscriptions": ["purchase"]}, "subscriptions.0", "'purchase' " + NOT_A_TOPIC),
        ({"subscriptions": ["action.ok", "event.*x"]}, "subscriptions.1", "'event.*x' " + NOT_A_TOPIC),
    ],
)  # fmt: skip
def test_registration_refuses_bad_urls_and_topics(api: Api, body: dict[str, Any], field: str, error: str) -> None:
    assert not api.settings.allow_private_webhooks
    full = {"url": "https://hooks.example.com/in", "subscriptions": ["action.*"]} | body
    response = api.client.post("/v1/webhooks", json=full, headers=api.as_(api.key()))
    assert response.status_code == 400, response.text
    code = "invalid_url" if field == "url" else "invalid"
    assert response.json() == {"error": error, "details": [{"field": field, "code": code, "message": error}]}


# Every spelling a resolver reads as an address (inet_aton's, and IPv6's) is the address it spells.
@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://2130706433/", "a loopback address (2130706433 is 127.0.0.1)"),
        ("http://0x7f000001/", "a loopback address (0x7f000001 is 127.0.0.1)"),
        ("http://0X7F.0.0.1/", "a loopback address (0x7f.0.0.1 is 127.0.0.1)"),
        ("http://0177.0.0.1/", "a loopback address (0177.0.0.1 is 127.0.0.1)"),
        ("http://017700000001/", "a loopback address (017700000001 is 127.0.0.1)"),
        ("http://0251.0376.0251.0376/", "a cloud metadata address (0251.0376.0251.0376 is 169.254.169.254)"),
        ("http://127.1/", "a loopback address (127.1 is 127.0.0.1)"),
        ("http://127.0.0.1./", "a loopback address (127.0.0.1. is 127.0.0.1)"),
        ("http://0/", "an unspecified address (0 is 0.0.0.0)"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://10.1/", "a private address (10.1 is 10.0.0.1)"),
        ("http://3232235777:8080/x", "a private address (3232235777 is 192.168.1.1)"),
        ("http://0xa9fea9fe/", "a cloud metadata address (0xa9fea9fe is 169.254.169.254)"),
        ("http://0xe0000001/", "a multicast address (0xe0000001 is 224.0.0.1)"),
        ("http://240.0.0.1/", "a reserved address"),
        ("http://[::1]/", "a loopback address"),
        ("http://[0:0:0:0:0:0:0:1]/", "a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "a loopback address"),
        ("http://[::ffff:7f00:1]/", "a loopback address"),
        ("http://[64:ff9b::7f00:1]/", "a loopback address"),
        ("http://[::1%25lo]/", "a loopback address"),
        ("http://[fe80::1%25eth0]:9000/", "a link-local address"),
        ("http://[::]/", "an unspecified address"),
        ("http://[ff02::1]/", "a multicast address"),
    ],
)  # fmt: skip
def test_registration_refuses_every_spelling_of_a_private_address(api: Api, url: str, error: str) -> None:
    key = api.as_(api.key())
    message = f"url points to {error}" + ALLOW_PRIVATE
    expected = {"error": message, "details": [{"field": "url", "code": "invalid_url", "message": message}]}
    created = api.client.post("/v1/webhooks", json={"url": url}, headers=key)
    assert (created.status_code, created.json()) == (400, expected)
    # An update checks the same way.
    endpoint = api.client.post("/v1/webhooks", json={"url": "https://hooks.example.com/in"}, headers=key).json()
    updated = api.client.patch(f"/v1/webhooks/{endpoint['id']}", json={"url": url}, headers=key)
    assert (updated.status_code, updated.json()) == (400, expected)
    assert api.client.get(f"/v1/webhooks/{endpoint['id']}", headers=key).json()["url"] == "https://hooks.example.com/in"


@pytest.mark.parametrize(
    "url", ["http://LOCALHOST./", "http://localhost.localdomain/", "http://a.b.localhost/", "http://ip6-localhost/"]
)
def test_registration_refuses_names_of_this_machine(api: Api, url: str) -> None:
    message = "url points to this machine" + ALLOW_PRIVATE
    response = api.client.post("/v1/webhooks", json={"url": url}, headers=api.as_(api.key()))
    assert (response.status_code, response.json()) == (
        400,
        {"error": message, "details": [{"field": "url", "code": "invalid_url", "message": message}]},
    )


def test_a_public_address_in_another_spelling_is_a_public_address(api: Api) -> None:
    response = api.client.post("/v1/webhooks", json={"url": "http://134744072/in"}, headers=api.as_(api.key()))
    assert response.status_code == 201, response.text  # 8.8.8.8; the guard checks it again at every connection


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[fe80::1%eth0]", "fe80::1%eth0"),
        ("::1", "::1"),
        ("hooks.example.com", None),
        ("1.2.3.4.5", None),
        ("0x", None),
        ("127.0.0.1 x", None),
        ("deadbeef", None),
        ("", None),
    ],
)
def test_literal_address_reads_what_a_resolver_reads(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found is not None else None) == address


def test_subscriptions_may_be_empty_and_default_to_none(api: Api) -> None:
    """An endpoint that only a trigger's `webhook` action names needs no made-up topic."""
    key = api.as_(api.key())
    url = "https://hooks.example.com/in"
    for body in ({"url": url}, {"url": url, "subscriptions": []}):
        response = api.client.post("/v1/webhooks", json=body, headers=key)
        assert response.status_code == 201, response.text
        assert response.json() == new_endpoint(response.json(), url, [])
    subscribed = api.client.post("/v1/webhooks", json={"url": url, "subscriptions": ["event.*"]}, headers=key).json()
    patched = api.client.patch(f"/v1/webhooks/{subscribed['id']}", json={"subscriptions": []}, headers=key)
    assert (patched.status_code, patched.json()["subscriptions"]) == (200, [])
    assert [e["subscriptions"] for e in api.client.get("/v1/webhooks", headers=key).json()["data"]] == [[], [], []]


def test_roles_and_scoping(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    settings = hooks.settings
    viewer, ingest = make_key(settings, "acme", "viewer"), make_key(settings, "acme", "ingest")
    other_tenant, other_mode = make_key(settings, "globex"), make_key(settings, "acme", mode="test")
    as_ = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    assert hooks.client.get("/v1/webhooks", headers=as_(viewer)).status_code == 200
    assert hooks.client.get("/v1/deliveries", headers=as_(viewer)).status_code == 200
    for method, path in [
        ("POST", "/v1/webhooks"),
        ("PATCH", f"/v1/webhooks/{endpoint['id']}"),
        ("DELETE", f"/v1/webhooks/{endpoint['id']}"),
        ("POST", f"/v1/webhooks/{endpoint['id']}/rotate"),
        ("POST", f"/v1/webhooks/{endpoint['id']}/test"),
        ("POST", "/v1/deliveries/msg_x/retry"),
    ]:
        assert hooks.client.request(method, path, json={}, headers=as_(viewer)).status_code == 403
    assert hooks.client.get("/v1/webhooks", headers=as_(ingest)).status_code == 403
    for key in (other_tenant, other_mode):
        assert hooks.client.get("/v1/webhooks", headers=as_(key)).json() == {"data": []}
        assert hooks.client.get(f"/v1/webhooks/{endpoint['id']}", headers=as_(key)).status_code == 404
        assert hooks.client.post(f"/v1/webhooks/{endpoint['id']}/rotate", headers=as_(key)).status_code == 404


# Delivery


def test_delivers_signed_to_subscribed_endpoints_once(hooks: Hooks) -> None:
    exact = hooks.endpoint("/exact", ["action.recommend"])
    wildcard = hooks.endpoint("/wild", ["action.*"])
    events = hooks.endpoint("/events", ["event.purchase", "event.*"])
    ids = hooks.enqueue("action.recommend", "act_1", data={"decisionFlowId": "df_upsell"})
    assert ids == hooks.enqueue("action.recommend", "act_1")  # the same message twice: the same ids
    assert len(set(ids)) == 2 and all(i.startswith("msg_") and len(i) == 36 for i in ids)
    [to_events_id] = hooks.enqueue("event.outcome.recorded", "evt_1")

    assert hooks.deliver() == 3
    assert hooks.deliver() == 0
    [to_exact], [to_wild], [to_events] = (hooks.receiver.at(p) for p in ("/exact", "/wild", "/events"))
    message = to_exact.verify(exact["secret"])
    assert message == {
        "type": "action.recommend",
        "timestamp": message["timestamp"],
        "data": {"decisionFlowId": "df_upsell"},
    }
    assert to_wild.verify(wildcard["secret"]) == message
    assert to_events.verify(events["secret"])["type"] == "event.outcome.recorded"
    assert to_events.headers["webhook-id"] == to_events_id
    with pytest.raises(WebhookVerificationError):
        to_exact.verify(wildcard["secret"])
    assert to_exact.headers["webhook-id"] == ids[0] and to_wild.headers["webhook-id"] == ids[1]
    assert to_exact.headers["content-type"] == "application/json"
    assert abs(to_exact.timestamp - time.time()) < 5
    assert to_exact.headers["webhook-signature"].startswith("v1,") and " " not in to_exact.headers["webhook-signature"]

    delivery = hooks.delivery(ids[0])
    assert delivery == {
        "id": ids[0],
        "endpoint_id": exact["id"],
        "topic": "action.recommend",
        "message_key": "act_1",
        "status": "delivered",
        "attempts": 1,
        "next_attempt_at": None,
        "last_status": 200,
        "last_error": None,
        "created_at": delivery["created_at"],
        "delivered_at": delivery["delivered_at"],
        "payload": json.loads(to_exact.body),
    }
    assert recent(delivery["created_at"]) and recent(delivery["delivered_at"])
    [attempt] = hooks.attempts(exact["id"])
    assert attempt == {
        "delivery_id": ids[0],
        "endpoint_id": exact["id"],
        "attempt": 1,
        "at": attempt["at"],
        "status_code": 200,
        "latency_ms": attempt["latency_ms"],
        "error": None,
    }
    assert 0 < attempt["latency_ms"] < 2000


def test_enqueue_to_a_named_endpoint_and_unknown_ones(hooks: Hooks) -> None:
    endpoint = hooks.endpoint("/named", ["event.purchase"])
    [delivery_id] = hooks.enqueue("action.webhook", "act_9", endpoint_id=endpoint["id"])
    assert hooks.enqueue("action.webhook", "act_10", endpoint_id="whe_nope") == []
    hooks.client.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": False}, headers=hooks.auth)
    assert hooks.enqueue("action.webhook", "act_10", endpoint_id=endpoint["id"]) == []
    # Disabling failed the pending delivery with the reason; nothing is sent.
    assert hooks.deliver() == 0
    delivery = hooks.delivery(delivery_id)
    assert (delivery["status"], delivery["last_error"]) == ("failed", "endpoint disabled: disabled through the API")


def test_retries_on_500_with_the_same_id_and_a_fresh_timestamp(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    hooks.receiver.script("/hook", 500, 502)
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    assert hooks.deliver() == 1
    pending = hooks.delivery(delivery_id)
    assert (pending["status"], pending["attempts"], pending["last_status"], pending["last_error"]) == (
        "pending", 1, 500, "HTTP 500"
    )  # fmt: skip
    # The schedule says 5 s before the second attempt (no jitter in these tests).
    assert datetime.fromisoformat(pending["next_attempt_at"]) - hooks.clock() > timedelta(seconds=4)
    hooks.advance(4)
    assert hooks.deliver() == 0
    hooks.advance(1.5)
    assert hooks.deliver() == 1
    hooks.advance(299)
    assert hooks.deliver() == 0
    hooks.advance(2)
    assert hooks.deliver() == 1

    requests = hooks.receiver.at("/hook")
    assert [r.headers["webhook-id"] for r in requests] == [delivery_id] * 3
    assert requests[1].timestamp - requests[0].timestamp >= 5
    assert requests[2].timestamp - requests[1].timestamp >= 300
    assert all(r.verify(endpoint["secret"]) == json.loads(requests[0].body) for r in requests[:2])
    assert len({r.headers["webhook-signature"] for r in requests}) == 3
    assert hooks.delivery(delivery_id)["status"] == "delivered"
    assert [(a["attempt"], a["status_code"], a["error"]) for a in hooks.attempts(endpoint["id"])] == [
        (3, 200, None),
        (2, 502, "HTTP 502"),
        (1, 500, "HTTP 500"),
    ]


def test_retry_after_is_honoured_in_seconds_and_as_a_date(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    later = format_datetime(hooks.clock() + timedelta(seconds=200), usegmt=True)
    hooks.receiver.script(
        "/hook",
        Reply(429, {"Retry-After": "120"}),
        Reply(503, {"Retry-After": later}),
        Reply(429, {"Retry-After": "9999"}),
    )
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    assert hooks.deliver() == 1
    hooks.advance(119)  # the schedule alone would have retried after 5 s
    assert hooks.deliver() == 0
    hooks.advance(2)
    assert hooks.deliver() == 1
    hooks.advance(75)  # 121 + 75 < 200
    assert hooks.deliver() == 0
    hooks.advance(6)
    assert hooks.deliver() == 1
    # Retry-After is bounded by webhook_max_retry_after; the schedule is used up after this one.
    assert hooks.delivery(delivery_id)["status"] == "failed"
    assert [a["status_code"] for a in hooks.attempts(endpoint["id"])] == [429, 503, 429]


def test_retry_after_is_bounded(hooks: Hooks) -> None:
    hooks.endpoint()
    hooks.receiver.script("/hook", Reply(503, {"Retry-After": "86400"}))
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    assert hooks.deliver(hooks.worker(webhook_max_retry_after=60)) == 1
    wait = datetime.fromisoformat(hooks.delivery(delivery_id)["next_attempt_at"]) - hooks.clock()
    assert timedelta(seconds=55) < wait <= timedelta(seconds=60)


def test_410_disables_the_endpoint(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    hooks.receiver.script("/hook", 410)
    [gone], [other] = hooks.enqueue("action.recommend", "act_1"), hooks.enqueue("action.recommend", "act_2")
    # Both are claimed together; one at a time, so the 410 arrives before the second is sent.
    assert hooks.deliver(hooks.worker(webhook_concurrency=1)) == 2
    assert len(hooks.receiver.requests) == 1
    view = hooks.get(f"/v1/webhooks/{endpoint['id']}")
    assert (view["enabled"], view["disabled_reason"]) == (False, "the endpoint answered 410 Gone")
    assert view == {k: v for k, v in endpoint.items() if k != "secret"} | {
        "enabled": False,
        "disabled_reason": "the endpoint answered 410 Gone",
        "updated_at": view["updated_at"],
    }
    failed = {
        d["id"]: (d["status"], d["attempts"], d["last_status"], d["last_error"])
        for d in hooks.get("/v1/deliveries")["data"]
    }
    assert failed == {
        gone: ("failed", 1, 410, "HTTP 410"),
        other: ("failed", 0, None, "endpoint disabled: the endpoint answered 410 Gone"),
    }
    # Nothing more goes to a disabled endpoint; re-enabling lets a failed delivery be retried.
    assert hooks.enqueue("action.recommend", "act_3") == []
    response = hooks.client.post(f"/v1/deliveries/{gone}/retry", headers=hooks.auth)
    assert (response.status_code, response.json()) == (
        409, {"error": "the delivery's webhook endpoint is disabled: enable it first", "details": []}
    )  # fmt: skip
    hooks.client.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": True}, headers=hooks.auth)
    for queued in (gone, other):
        assert hooks.client.post(f"/v1/deliveries/{queued}/retry", headers=hooks.auth).status_code == 202
    assert hooks.deliver() == 2
    assert {hooks.delivery(d)["status"] for d in (gone, other)} == {"delivered"}


def test_dead_letter_after_the_schedule_then_manual_retry(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    worker = hooks.worker(webhook_retry_schedule=parse_schedule("0,0,0"))
    hooks.receiver.script("/hook", 500, 500, 500, 500)
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    assert [hooks.deliver(worker) for _ in range(4)] == [1, 1, 1, 0]

    failed = hooks.get("/v1/deliveries", status="failed")
    assert failed == {"data": [hooks.delivery(delivery_id)], "next_cursor": None}
    dead = failed["data"][0]
    assert (dead["status"], dead["attempts"], dead["last_status"], dead["next_attempt_at"]) == ("failed", 3, 500, None)
    assert hooks.get("/v1/deliveries", status="pending") == {"data": [], "next_cursor": None}

    response = hooks.client.post(f"/v1/deliveries/{delivery_id}/retry", headers=hooks.auth)
    assert response.status_code == 202, response.text
    assert response.json() == dead | {"status": "pending", "next_attempt_at": response.json()["next_attempt_at"]}
    # A fresh schedule: it fails once more (the script's last 500), then succeeds.
    assert [hooks.deliver(worker) for _ in range(3)] == [1, 1, 0]
    done = hooks.delivery(delivery_id)
    assert (done["status"], done["attempts"], done["last_status"]) == ("delivered", 5, 200)
    assert [a["attempt"] for a in hooks.attempts(endpoint["id"])] == [5, 4, 3, 2, 1]

    response = hooks.client.post(f"/v1/deliveries/{delivery_id}/retry", headers=hooks.auth)
    assert (response.status_code, response.json()) == (
        409, {"error": "only a failed delivery can be retried; this one is delivered", "details": []}
    )  # fmt: skip
    response = hooks.client.post("/v1/deliveries/msg_nope/retry", headers=hooks.auth)
    assert (response.status_code, response.json()) == (404, {"error": "no such delivery", "details": []})
    response = hooks.client.get("/v1/deliveries", params={"status": "lost"}, headers=hooks.auth)
    assert response.status_code == 400


def test_rotation_signs_with_both_secrets_during_the_grace_period(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    old = endpoint["secret"]
    with TestClient(create_app(replace(hooks.settings, webhook_rotation_grace=60))) as client:
        response = client.post(f"/v1/webhooks/{endpoint['id']}/rotate", headers=hooks.auth)
    assert response.status_code == 200, response.text
    rotated = response.json()
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_")
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(seconds=55) < expires - datetime.now(UTC) <= timedelta(seconds=60)
    assert rotated == {k: v for k, v in endpoint.items() if k != "secret"} | {
        "secret": new,
        "previous_secret_expires_at": rotated["previous_secret_expires_at"],
        "updated_at": rotated["updated_at"],
    }
    assert new not in hooks.client.get(f"/v1/webhooks/{endpoint['id']}", headers=hooks.auth).text

    hooks.enqueue("action.recommend", "during")
    assert hooks.deliver() == 1
    during = hooks.receiver.requests[-1]
    signatures = during.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret, signature in zip((new, old), signatures, strict=True):
        alone = during.headers | {"webhook-signature": signature}
        assert Webhook(secret).verify(during.body, alone)
        other = new if secret == old else old
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(during.body, alone)

    hooks.advance(61)
    hooks.enqueue("action.recommend", "after")
    assert hooks.deliver() == 1
    after = hooks.receiver.requests[-1]
    assert " " not in after.headers["webhook-signature"]
    assert after.verify(new)
    with pytest.raises(WebhookVerificationError):
        after.verify(old)


def test_every_rotated_out_secret_signs_until_its_own_grace_period_ends(hooks: Hooks) -> None:
    """Two rotations with grace periods of 60 s and 120 s: three signatures, then two, then one."""
    endpoint = hooks.endpoint()
    first = endpoint["secret"]
    rotated = []
    for grace in (60, 120):
        with TestClient(create_app(replace(hooks.settings, webhook_rotation_grace=grace))) as client:
            response = client.post(f"/v1/webhooks/{endpoint['id']}/rotate", headers=hooks.auth)
        assert response.status_code == 200, response.text
        rotated.append(response.json())
    second, third = (r["secret"] for r in rotated)
    # The last of the rotated-out secrets to stop signing is the one rotated out last.
    expires = datetime.fromisoformat(rotated[1]["previous_secret_expires_at"])
    assert timedelta(seconds=115) < expires - datetime.now(UTC) <= timedelta(seconds=120)

    def signed(key: str, live: list[str], dead: list[str]) -> None:
        hooks.enqueue("action.recommend", key)
        assert hooks.deliver() == 1
        received = hooks.receiver.requests[-1]
        signatures = received.headers["webhook-signature"].split(" ")
        assert len(signatures) == len(live)
        for secret, signature in zip(live, signatures, strict=True):
            assert Webhook(secret).verify(received.body, received.headers | {"webhook-signature": signature})
        for secret in dead:
            with pytest.raises(WebhookVerificationError):
                received.verify(secret)

    signed("all-three", [third, second, first], [])
    hooks.advance(61)
    signed("two", [third, second], [first])
    hooks.advance(60)
    signed("one", [third], [first, second])


def test_rotation_stops_at_ten_live_secrets(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    for _ in range(9):
        assert hooks.client.post(f"/v1/webhooks/{endpoint['id']}/rotate", headers=hooks.auth).status_code == 200
    response = hooks.client.post(f"/v1/webhooks/{endpoint['id']}/rotate", headers=hooks.auth)
    assert (response.status_code, response.json()) == (
        409,
        {
            "error": "10 secrets of this endpoint would sign every message: rotate again once the oldest rotated-out"
            " one has expired",
            "details": [],
        },
    )
    hooks.enqueue("action.recommend", "ten")
    assert hooks.deliver() == 1
    assert len(hooks.receiver.requests[-1].headers["webhook-signature"].split(" ")) == 10
    # Rotated out with no grace period, a secret stops signing at once, and its place is taken by
    # none: rotation drops what has expired.
    other = hooks.endpoint("/other")
    with TestClient(create_app(replace(hooks.settings, webhook_rotation_grace=0))) as client:
        for _ in range(12):
            response = client.post(f"/v1/webhooks/{other['id']}/rotate", headers=hooks.auth)
            assert response.status_code == 200, response.text
    hooks.enqueue("action.recommend", "one", endpoint_id=other["id"])
    assert hooks.deliver() == 1
    received = hooks.receiver.at("/other")[-1]
    assert received.verify(response.json()["secret"]) and " " not in received.headers["webhook-signature"]


def test_redirects_are_not_followed(hooks: Hooks) -> None:
    endpoint = hooks.endpoint("/moved")
    hooks.receiver.script("/moved", Reply(302, {"Location": hooks.receiver.url("/elsewhere")}))
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    assert hooks.deliver() == 1
    assert hooks.receiver.at("/elsewhere") == []
    delivery = hooks.delivery(delivery_id)
    assert (delivery["status"], delivery["last_status"], delivery["last_error"]) == (
        "pending", 302, "HTTP 302: redirects are not followed"
    )  # fmt: skip
    assert [a["status_code"] for a in hooks.attempts(endpoint["id"])] == [302]


def test_a_slow_receiver_times_out(hooks: Hooks) -> None:
    endpoint = hooks.endpoint("/slow")
    # The reply would come after 5 s: a delivery done well before that did not wait for it (a
    # margin wide enough for a loaded machine, where 0.25 s of timeout can take 0.8 s).
    hooks.receiver.script("/slow", Reply(200, delay=5))
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    started = time.monotonic()
    assert hooks.deliver(hooks.worker(webhook_timeout=0.25)) == 1
    assert time.monotonic() - started < 4
    [attempt] = hooks.attempts(endpoint["id"])
    assert (attempt["status_code"], attempt["error"]) == (None, "timed out after 0.25s")
    assert 200 <= attempt["latency_ms"] < 4000
    assert hooks.delivery(delivery_id)["status"] == "pending"


def test_claims_expire_so_a_dead_worker_loses_nothing(hooks: Hooks) -> None:
    hooks.endpoint()
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    worker = hooks.worker()
    claimed = hooks.runner.run(worker._claim(10))  # claimed, then the worker "dies"
    assert [d.id for d in claimed] == [delivery_id]
    assert hooks.deliver(worker) == 0
    hooks.advance(worker.timeout + 61)
    assert hooks.deliver(worker) == 1
    assert hooks.delivery(delivery_id)["status"] == "delivered"


def test_attempts_listing_pages(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    hooks.receiver.script("/hook", 500, 404)
    for key in ("a", "b", "c"):
        hooks.enqueue("action.recommend", key)
    assert hooks.deliver() == 3
    first = hooks.get(f"/v1/webhooks/{endpoint['id']}/attempts", limit=2)
    assert len(first["data"]) == 2 and first["next_cursor"] is not None
    rest = hooks.get(f"/v1/webhooks/{endpoint['id']}/attempts", limit=2, cursor=first["next_cursor"])
    assert len(rest["data"]) == 1 and rest["next_cursor"] is None
    rows = first["data"] + rest["data"]
    assert sorted(a["status_code"] for a in rows) == [200, 404, 500]
    assert all(
        set(a) == {"delivery_id", "endpoint_id", "attempt", "at", "status_code", "latency_ms", "error"} for a in rows
    )
    assert {a["error"] for a in rows} == {None, "HTTP 404", "HTTP 500"}
    pages = hooks.get("/v1/deliveries", endpoint_id=endpoint["id"], limit=2)
    assert len(pages["data"]) == 2 and pages["next_cursor"]
    assert hooks.get("/v1/deliveries", endpoint_id="whe_other") == {"data": [], "next_cursor": None}


def test_deleting_an_endpoint_drops_its_outbox(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    hooks.enqueue("action.recommend", "act_1")
    hooks.client.delete(f"/v1/webhooks/{endpoint['id']}", headers=hooks.auth)
    assert hooks.get("/v1/deliveries") == {"data": [], "next_cursor": None}
    assert hooks.deliver() == 0


# The SSRF guard


class NoConnections(httpcore.AsyncNetworkBackend):
    """Stands in for the network behind the guard: records any connection the guard lets
    through and refuses it, so these tests never send a packet to a private address."""

    def __init__(self) -> None:
        self.attempted: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.attempted.append((host, port))
        raise httpcore.ConnectError("test network: no connections")


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("169.254.169.254", "169.254.169.254 is a cloud metadata address"),
        ("[::1]", "::1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 is a loopback address"),
        ("localhost", "localhost resolves to {address}, which is a loopback address"),
        ("2130706433", "2130706433 (127.0.0.1) is a loopback address"),
        ("0x7f000001", "0x7f000001 (127.0.0.1) is a loopback address"),
        ("127.1", "127.1 (127.0.0.1) is a loopback address"),
        ("0", "0 (0.0.0.0) is an unspecified address"),
    ],
)
def test_the_ssrf_guard_refuses_private_addresses_at_delivery_time(hooks: Hooks, host: str, error: str) -> None:
    # Registered while private addresses were allowed (or while the name resolved elsewhere):
    # the guard still refuses when the worker connects.
    endpoint = hooks.endpoint(url=hooks.receiver.url("/hook", host))
    network = NoConnections()
    guarded = hooks.worker(allow_private_webhooks=False, network_backend=network)
    [delivery_id] = hooks.enqueue("action.recommend", "act_1")
    assert hooks.deliver(guarded) == 1
    assert network.attempted == [] and hooks.receiver.requests == []
    [attempt] = hooks.attempts(endpoint["id"])
    assert attempt["status_code"] is None
    assert attempt["error"] is not None
    prefix = "refused by the SSRF guard: "
    if "{address}" in error:
        assert attempt["error"] in {prefix + error.format(address=a) for a in ("127.0.0.1", "::1")}
    else:
        assert attempt["error"] == prefix + error
    assert hooks.delivery(delivery_id)["last_error"] == attempt["error"]

    # The guard is what stopped it: with private addresses allowed, the same delivery goes
    # through (where the host is the receiver's 127.0.0.1).
    if host in ("127.0.0.1", "localhost", "2130706433", "0x7f000001", "127.1"):
        hooks.advance(6)
        assert hooks.deliver(hooks.worker()) == 1
        assert hooks.delivery(delivery_id)["status"] == "delivered"


def test_the_guard_checks_every_resolved_address(hooks: Hooks) -> None:
    endpoint = hooks.endpoint(url="https://hooks.example.com/in")
    network = NoConnections()

    async def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["93.184.216.34", "fd00:ec2::254"]

    hooks.enqueue("action.recommend", "act_1")
    assert hooks.deliver(hooks.worker(allow_private_webhooks=False, network_backend=network, resolve=resolve)) == 1
    assert network.attempted == []
    assert hooks.attempts(endpoint["id"])[0]["error"] == (
        "refused by the SSRF guard: hooks.example.com resolves to fd00:ec2::254, which is a cloud metadata address"
    )

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    hooks.advance(6)
    assert hooks.deliver(hooks.worker(allow_private_webhooks=False, network_backend=network, resolve=public)) == 1
    assert network.attempted == [("93.184.216.34", 443)]  # connects to the very address it checked
    assert hooks.attempts(endpoint["id"])[0]["error"] == "ConnectError: test network: no connections"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "non-public"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_forbidden_reason(address: str, reason: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


def test_check_url_allows_private_when_asked() -> None:
    assert check_url("http://127.0.0.1:9000/x", allow_private=True) is None
    assert check_url("http://localhost/x", allow_private=True) is None
    assert check_url("https://hooks.example.com/in") is None
    assert check_url("http://user@127.0.0.1/", allow_private=True) == "url must not contain credentials"


def test_retry_after_parsing_and_jitter() -> None:
    now = datetime(2026, 4, 12, 10, 30, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Sun, 12 Apr 2026 10:32:00 GMT", now) == 120
    assert parse_retry_after("Sun, 12 Apr 2026 10:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_schedule("0, 5,300") == (0, 5, 300)
    with pytest.raises(ValueError):
        parse_schedule("5,-1")
    assert Settings().webhook_retry_schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def test_waits_are_jittered(hooks: Hooks) -> None:
    endpoint = hooks.endpoint()
    hooks.receiver.script("/hook", *[500] * 20)
    ids = [hooks.enqueue("action.recommend", f"act_{n}")[0] for n in range(20)]
    # The worker's clock stands still, so each wait is its draw alone and not the draw plus
    # however long the attempt took on a loaded machine.
    now = hooks.clock()
    worker = DeliveryWorker(hooks.store, hooks.settings, lambda: now, rng=random.Random(7))
    hooks.workers.append(worker)
    assert hooks.deliver(worker) == 20
    tried_at = {a["delivery_id"]: datetime.fromisoformat(a["at"]) for a in hooks.attempts(endpoint["id"])}
    assert tried_at == dict.fromkeys(ids, now)
    waits = [(datetime.fromisoformat(hooks.delivery(i)["next_attempt_at"]) - now).total_seconds() for i in ids]
    # schedule[1] = 5 s, ± 10%: the worker's 20 draws, in whichever order the deliveries took them.
    rng = random.Random(7)
    draws = sorted(5 * (1 + rng.uniform(-0.1, 0.1)) for _ in range(20))
    assert min(draws) < 4.7 and max(draws) > 5.3  # the draws spread: jitter, not a constant
    assert sorted(waits) == pytest.approx(draws, abs=1e-6)


# A worker's delivery, on the real clock


def test_a_workers_delivery_sends_test_messages(settings: Settings, receiver: Receiver) -> None:
    settings = _settings(settings, webhook_worker=True, webhook_poll_interval=0.05)
    key = {"Authorization": f"Bearer {make_key(settings, 'acme', 'editor')}"}
    with WorkerThread(settings), TestClient(create_app(settings)) as client:
        created = client.post(
            "/v1/webhooks", json={"url": receiver.url("/live"), "subscriptions": ["action.*"]}, headers=key
        ).json()
        response = client.post(f"/v1/webhooks/{created['id']}/test", headers=key)
        assert response.status_code == 202, response.text
        queued = response.json()
        assert queued == {
            "id": queued["id"],
            "endpoint_id": created["id"],
            "topic": "webhook.test",
            "message_key": queued["message_key"],
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": queued["created_at"],
            "last_status": None,
            "last_error": None,
            "created_at": queued["created_at"],
            "delivered_at": None,
            "payload": {
                "type": "webhook.test",
                "timestamp": queued["payload"]["timestamp"],
                "data": {"endpoint_id": created["id"]},
            },
        }
        deadline = time.monotonic() + 5
        while not receiver.at("/live") and time.monotonic() < deadline:
            time.sleep(0.02)
        [request] = receiver.at("/live")
        assert request.verify(created["secret"]) == queued["payload"]
        assert request.headers["webhook-id"] == queued["id"]
        while client.get(f"/v1/deliveries/{queued['id']}", headers=key).json()["status"] != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.02)

        client.patch(f"/v1/webhooks/{created['id']}", json={"enabled": False}, headers=key)
        response = client.post(f"/v1/webhooks/{created['id']}/test", headers=key)
        assert (response.status_code, response.json()) == (
            409, {"error": "the webhook endpoint is disabled", "details": []}
        )  # fmt: skip


# From ingest to a signed request: triggers, actions and event subscriptions together


def test_trigger_actions_and_events_reach_subscribers_signed(hooks: Hooks) -> None:
    actions = hooks.endpoint("/actions", ["action.recommend"])
    named = hooks.endpoint("/named", [])  # only the `webhook` action names it
    purchases = hooks.endpoint("/purchases", ["event.purchase"])
    for rule in (
        {
            "name": "upsell",
            "event_types": ["purchase"],
            "priority": 2,
            "action": {"type": "recommend", "config": {"decisionFlowId": "df_upsell"}},
        },
        {
            "name": "crm",
            "event_types": ["purchase"],
            "priority": 1,
            "action": {"type": "webhook", "config": {"endpoint_id": named["id"]}},
        },
    ):
        assert hooks.client.post("/v1/triggers", json=rule, headers=hooks.auth).status_code == 201
    sent = hooks.client.post(
        "/v1/events?wait=processed",
        json={"events": [{"type": "purchase", "subject": "c1", "data": {"amount": 5}}, {"type": "page_view"}]},
        headers=hooks.auth,
    ).json()
    event_id = sent["results"][0]["id"]
    [recommend, webhook] = sent["results"][0]["actions"]
    assert (recommend["type"], webhook["type"], webhook["status"]) == ("recommend", "webhook", "dispatched")

    assert hooks.deliver() == 3
    [to_actions] = hooks.receiver.at("/actions")
    message = to_actions.verify(actions["secret"])
    assert (message["type"], message["data"]["action"]["id"], message["data"]["event"]["id"]) == (
        "action.recommend",
        recommend["id"],
        event_id,
    )
    assert message["data"]["action"]["config"] == {"decisionFlowId": "df_upsell"}
    [to_named] = hooks.receiver.at("/named")
    assert to_named.verify(named["secret"])["data"]["action"]["id"] == webhook["id"]
    assert webhook["result"] == {"deliveries": [to_named.headers["webhook-id"]]}
    [to_purchases] = hooks.receiver.at("/purchases")
    event_message = to_purchases.verify(purchases["secret"])
    assert event_message["type"] == "event.purchase"
    assert event_message["data"]["event"] == hooks.client.get(f"/v1/events/{event_id}", headers=hooks.auth).json()
