"""No credential in any log line or in the store: one representative session against a real
`headwater serve --log-level debug` (its worker beside it), every line it and its worker print
captured, then every table dumped and searched for API keys, webhook secrets and the values of
the Authorization headers sent."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx
from standardwebhooks import Webhook

from headwater.config import Settings
from tests import dump
from tests.conftest import ServerProcess, make_key, server_args
from tests.processing.test_webhooks import Receiver
from tests.test_secrets import KEY_TEXT, forms

SHOP = "https://shop.example"


def wait_for(condition: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.05)
    return found


def test_no_key_secret_or_authorization_value_is_logged_or_stored_in_clear(
    settings: Settings, server_factory: type[ServerProcess]
) -> None:
    admin = make_key(settings, "acme", "admin")  # before the start: no bootstrap key is printed
    env = {
        "HEADWATER_SECRET_KEY": KEY_TEXT,
        "HEADWATER_ALLOW_PRIVATE_WEBHOOKS": "1",
        "HEADWATER_WEBHOOK_POLL_INTERVAL": "0.05",
    }
    server = server_factory(settings.data_dir, env, args=("--log-level", "debug", *server_args(settings)))
    server.start()
    lines = server.drain()
    receiver = Receiver()
    client = httpx.Client(base_url=server.url, timeout=20)
    try:

        def post(path: str, body: Any, headers: dict[str, str], status: int = 200) -> Any:
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == status, response.text
            return response.json()

        as_admin = {"Authorization": f"Bearer {admin}"}
        ingest = post("/v1/keys", {"role": "ingest"}, as_admin, 201)["key"]
        browser = post("/v1/keys", {"role": "ingest", "publishable": True, "allowed_origins": [SHOP]}, as_admin, 201)
        editor = post("/v1/keys", {"role": "editor", "mode": "test"}, as_admin, 201)["key"]
        keys = [admin, ingest, browser["key"], editor]
        basic = "Basic " + base64.b64encode(f"{ingest}:".encode()).decode()
        authorizations = [f"Bearer {k}" for k in keys] + [basic]

        post("/v1/events", {"type": "bearer"}, {"Authorization": f"Bearer {ingest}"})
        post("/v1/events", {"type": "x-api-key"}, {"X-API-Key": ingest})
        post("/v1/track", {"event": "Basic", "userId": "u1"}, {"Authorization": basic})
        post("/v1/track", {"event": "writeKey", "userId": "u1", "writeKey": ingest}, {})
        post("/v1/events", {"type": "browser"}, {"Origin": SHOP, "Authorization": f"Bearer {browser['key']}"})
        post("/v1/events", {"type": "t"}, {"Authorization": f"Bearer {editor}"})
        typo = ingest[:20] + ("a" if ingest[20] != "a" else "b") + ingest[21:]
        post("/v1/events", {"type": "typo"}, {"Authorization": f"Bearer {typo}"}, 401)
        elsewhere = {"Origin": "https://evil.example", "X-API-Key": browser["key"]}
        post("/v1/events", {"type": "other origin"}, elsewhere, 403)
        keys.append(typo)

        endpoint = post("/v1/webhooks", {"url": receiver.url("/hook"), "subscriptions": ["event.*"]}, as_admin, 201)
        rotated = post(f"/v1/webhooks/{endpoint['id']}/rotate", {}, as_admin)["secret"]
        webhook_secrets = [endpoint["secret"], rotated]
        post(f"/v1/webhooks/{endpoint['id']}/test", {}, as_admin, 202)
        post("/v1/events", {"type": "purchase", "subject": "c1"}, {"X-API-Key": ingest})
        received = wait_for(lambda: len(receiver.at("/hook")) >= 2 and receiver.at("/hook"), 30, "two deliveries")
        for request in received:
            for secret, signature in zip(
                [rotated, endpoint["secret"]], request.headers["webhook-signature"].split(" "), strict=True
            ):
                assert Webhook(secret).verify(request.body, request.headers | {"webhook-signature": signature})
    finally:
        client.close()
        receiver.close()
        server.stop()

    logged = b"".join(lines)
    assert b"POST /v1/events 200" in logged  # the access log ran, at debug
    assert b"key=" + ingest[:12].encode() in logged  # which names keys by their display prefix
    needles = [
        *(k.encode() for k in keys),
        *(k[12:].encode() for k in keys),  # all but the prefix that is shown
        *(a.encode() for a in authorizations),
        *(f for s in webhook_secrets for f in forms(s)),
    ]
    assert [n for n in needles if n in logged] == []
    assert dump.found(settings, needles) == []
    # Keys are stored as their SHA-256, and that is all of them that is stored.
    stored = dump.rows(settings)["headwater.db:api_keys" if settings.store is None else "public.api_keys"]
    for key in keys[:-1]:
        assert hashlib.sha256(key.encode()).hexdigest().encode() in stored
