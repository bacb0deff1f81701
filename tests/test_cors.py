"""Browsers as clients: publishable ingest keys, their allowed origins, and CORS on the ingest
routes (preflight included), through HTTP on every backend."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from headwater.app import INGEST_PATHS
from tests.conftest import Api

SHOP = "https://shop.example"
ELSEWHERE = "https://evil.example"
ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, X-API-Key, X-Tenant-Id"
CORS_HEADERS = {
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-expose-headers",
    "access-control-allow-credentials",
}
PREFLIGHT_REFUSED = {
    "error": 'no publishable key allows this origin to POST here: create an ingest key with "publishable": true'
    ' and this origin in "allowed_origins"',
    "details": [],
}
WRONG_ORIGIN = {
    "error": "this publishable key may not be used from this origin: it is not in its allowed_origins",
    "details": [],
}
# A body each ingest route reads without complaint about its shape (or with a 400 at worst).
INGEST_BODIES: dict[str, Any] = {
    "/v1/batch": {"batch": [{"type": "track", "event": "Viewed", "userId": "u1"}]},
    "/v1/track": {"event": "Viewed", "userId": "u1"},
}


def publishable(api: Api, admin: str, origins: list[str], tenant_mode: str = "live") -> dict[str, Any]:
    body = {"role": "ingest", "mode": tenant_mode, "publishable": True, "allowed_origins": origins}
    response = api.client.post("/v1/keys", json=body, headers=api.as_(admin))
    assert response.status_code == 201, response.text
    return dict(response.json())


def cors_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k in CORS_HEADERS}


def preflight(api: Api, path: str, origin: str, method: str = "POST") -> Any:
    return api.client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_a_publishable_key_is_created_with_its_origins_as_browsers_send_them(api: Api) -> None:
    admin = api.key("acme")
    created = publishable(api, admin, ["HTTPS://Shop.Example:443", SHOP, "http://localhost:3000", "http://[::1]:8080"])
    assert created == {
        "id": created["id"],
        "key": created["key"],
        "tenant": "acme",
        "role": "ingest",
        "mode": "live",
        "prefix": created["key"][:12],
        "name": None,
        "created_at": created["created_at"],
        "publishable": True,
        "allowed_origins": [SHOP, "http://localhost:3000", "http://[::1]:8080"],
        "rate_limit": None,
    }
    [listed] = [k for k in api.client.get("/v1/keys", headers=api.as_(admin)).json()["data"] if k["publishable"]]
    assert listed == {k: v for k, v in created.items() if k not in ("key", "rate_limit")} | {"revoked_at": None}


def invalid(field: str, code: str, message: str) -> dict[str, Any]:
    return {"error": message, "details": [{"field": field, "code": code, "message": message}]}


def undecodable(field: str, code: str, message: str) -> dict[str, Any]:
    return {"error": "request body is not valid", "details": [{"field": field, "code": code, "message": message}]}


NEEDS_ORIGINS = "a publishable key needs allowed_origins: the origins whose pages may use it"
NOT_AN_ORIGIN = (
    "an origin is scheme://host[:port] with no path, query or user, e.g. https://shop.example"
    " (as a browser sends it in Origin)"
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"role": "viewer", "publishable": True, "allowed_origins": [SHOP]},
            invalid("publishable", "invalid", "only an ingest key can be publishable"),
            id="not-ingest",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True},
            invalid("allowed_origins", "required", NEEDS_ORIGINS),
            id="no-origins",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": []},
            invalid("allowed_origins", "required", NEEDS_ORIGINS),
            id="empty-origins",
        ),
        pytest.param(
            {"role": "ingest", "allowed_origins": [SHOP]},
            invalid("allowed_origins", "invalid", "only a publishable key has allowed_origins"),
            id="origins-without-publishable",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://shop.example/"]},
            invalid("allowed_origins.0", "invalid", f"allowed_origins.0: {NOT_AN_ORIGIN}"),
            id="trailing-slash",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": [SHOP, "https://shop.example/cart?x=1"]},
            invalid("allowed_origins.1", "invalid", f"allowed_origins.1: {NOT_AN_ORIGIN}"),
            id="path",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://*.shop.example"]},
            invalid(
                "allowed_origins.0",
                "invalid",
                "allowed_origins.0: wildcards are not supported: list each origin, e.g. https://shop.example",
            ),
            id="wildcard",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["*"]},
            invalid(
                "allowed_origins.0",
                "invalid",
                "allowed_origins.0: wildcards are not supported: list each origin, e.g. https://shop.example",
            ),
            id="star",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["null"]},
            invalid("allowed_origins.0", "invalid", f"allowed_origins.0: {NOT_AN_ORIGIN}"),
            id="null-origin",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["shop.example"]},
            invalid("allowed_origins.0", "invalid", f"allowed_origins.0: {NOT_AN_ORIGIN}"),
            id="no-scheme",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["ftp://shop.example"]},
            invalid("allowed_origins.0", "invalid", "allowed_origins.0: an origin's scheme is http or https"),
            id="ftp",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://user@shop.example"]},
            invalid(
                "allowed_origins.0",
                "invalid",
                "allowed_origins.0: 'user@shop.example' is neither a host name (letters, digits and '-' in"
                " dot-separated labels) nor an IP",
            ),
            id="credentials",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://shop.example:70000"]},
            invalid("allowed_origins.0", "invalid", "allowed_origins.0: an origin's port is from 1 to 65535"),
            id="port-too-big",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://shop.example:0"]},
            invalid("allowed_origins.0", "invalid", "allowed_origins.0: an origin's port is from 1 to 65535"),
            id="port-zero",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://[fffff::1]"]},
            invalid("allowed_origins.0", "invalid", "allowed_origins.0: [fffff::1] is not an IPv6 address"),
            id="bad-ipv6",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://bücher.example"]},
            invalid(
                "allowed_origins.0",
                "invalid",
                "allowed_origins.0: an origin is ASCII without whitespace (punycode for international names)",
            ),
            id="unicode",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://shop.example\r\nX-Evil: 1"]},
            invalid(
                "allowed_origins.0",
                "invalid",
                "allowed_origins.0: an origin is ASCII without whitespace (punycode for international names)",
            ),
            id="header-injection",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": ["https://" + "a" * 300]},
            undecodable("allowed_origins.0", "too_long", "Expected `str` of length <= 300"),
            id="too-long",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": [f"https://s{i}.example" for i in range(21)]},
            undecodable("allowed_origins", "too_long", "Expected `array` of length <= 20"),
            id="too-many",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": [5]},
            undecodable("allowed_origins.0", "invalid_type", "Expected `str`, got `int`"),
            id="origin-int",
        ),
        pytest.param(
            {"role": "ingest", "publishable": True, "allowed_origins": SHOP},
            undecodable("allowed_origins", "invalid_type", "Expected `array | null`, got `str`"),
            id="origins-string",
        ),
        pytest.param(
            {"role": "ingest", "publishable": "yes", "allowed_origins": [SHOP]},
            undecodable("publishable", "invalid_type", "Expected `bool`, got `str`"),
            id="publishable-string",
        ),
    ],
)
def test_bad_publishable_keys_are_400_and_create_nothing(api: Api, body: dict[str, Any], expected: Any) -> None:
    admin = api.key("acme")
    before = api.client.get("/v1/keys", headers=api.as_(admin)).json()
    response = api.client.post("/v1/keys", content=json.dumps(body).encode(), headers=api.as_(admin))
    assert (response.status_code, response.json()) == (400, expected)
    assert api.client.get("/v1/keys", headers=api.as_(admin)).json() == before


def test_preflight_is_answered_for_a_listed_origin_on_every_ingest_route(api: Api) -> None:
    publishable(api, api.key("acme"), [SHOP])
    for path in sorted(INGEST_PATHS):
        response = preflight(api, path, SHOP)
        assert (response.status_code, response.content) == (204, b""), path
        assert cors_headers(response) == {
            "access-control-allow-origin": SHOP,
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": "600",
        }
        assert response.headers["vary"] == "Origin"


@pytest.mark.parametrize(
    ("origin", "method"),
    [
        pytest.param(ELSEWHERE, "POST", id="other-origin"),
        pytest.param("https://shop.example:8443", "POST", id="other-port"),
        pytest.param("http://shop.example", "POST", id="other-scheme"),
        pytest.param("null", "POST", id="null"),
        pytest.param(SHOP + "\x7f", "POST", id="hostile"),
        pytest.param(SHOP, "DELETE", id="other-method"),
        pytest.param(SHOP, "post", id="method-case"),
    ],
)
def test_preflight_is_refused_without_cors_headers(api: Api, origin: str, method: str) -> None:
    publishable(api, api.key("acme"), [SHOP])
    response = preflight(api, "/v1/events", origin, method)
    assert (response.status_code, response.json()) == (403, PREFLIGHT_REFUSED)
    assert cors_headers(response) == {}
    assert response.headers["vary"] == "Origin"


def test_preflight_elsewhere_than_the_ingest_routes_gets_no_cors(api: Api) -> None:
    publishable(api, api.key("acme"), [SHOP])
    for path in ("/v1/keys", "/v1/webhooks", "/healthz"):
        response = preflight(api, path, SHOP)
        assert response.status_code == 405, path
        assert cors_headers(response) == {}


def test_a_revoked_publishable_key_stops_answering_preflight(api: Api) -> None:
    admin = api.key("acme")
    created = publishable(api, admin, [SHOP])
    assert preflight(api, "/v1/events", SHOP).status_code == 204
    assert api.client.delete(f"/v1/keys/{created['id']}", headers=api.as_(admin)).status_code == 200
    deadline = time.monotonic() + 10
    while preflight(api, "/v1/events", SHOP).status_code == 204:
        assert time.monotonic() < deadline, "the revoked key's origin is still answered"
        time.sleep(0.05)
    assert preflight(api, "/v1/events", SHOP).json() == PREFLIGHT_REFUSED


def test_the_cloudevents_validation_handshake_is_not_a_preflight(api: Api) -> None:
    """CloudEvents' own OPTIONS (WebHook-Request-Origin, no Access-Control-Request-Method) is still its route's."""
    publishable(api, api.key("acme"), [SHOP])
    key = api.key("acme", "ingest")
    headers = {"WebHook-Request-Origin": "eventemitter.example", "Origin": SHOP, **api.as_(key)}
    response = api.client.options("/v1/cloudevents", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["webhook-allowed-origin"] == "eventemitter.example"
    assert "access-control-allow-origin" not in response.headers


def test_a_request_from_a_listed_origin_gets_cors_headers(api: Api) -> None:
    key = publishable(api, api.key("acme"), [SHOP])["key"]
    response = api.client.post("/v1/events", json={"type": "page_view"}, headers={"Origin": SHOP, **api.as_(key)})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "accepted"
    assert cors_headers(response) == {
        "access-control-allow-origin": SHOP,
        "access-control-expose-headers": "Retry-After",
    }
    assert response.headers["vary"] == "Origin"
    # An error after the key is checked is readable by the page too.
    response = api.client.post("/v1/events", content=b"{", headers={"Origin": SHOP, **api.as_(key)})
    assert response.status_code == 400
    assert cors_headers(response)["access-control-allow-origin"] == SHOP


def test_segment_in_a_browser_sends_its_write_key_as_basic_auth_or_in_the_body(api: Api) -> None:
    key = publishable(api, api.key("acme"), [SHOP])["key"]
    basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    message = {"event": "Viewed", "userId": "u1"}
    for headers, body in (
        ({"Authorization": basic}, message),
        ({"Content-Type": "text/plain"}, message | {"writeKey": key}),
    ):
        response = api.client.post("/v1/track", content=json.dumps(body), headers={"Origin": SHOP, **headers})
        assert response.status_code == 200, response.text
        assert cors_headers(response)["access-control-allow-origin"] == SHOP
        response = api.client.post("/v1/track", content=json.dumps(body), headers={"Origin": ELSEWHERE, **headers})
        assert (response.status_code, response.json()) == (403, WRONG_ORIGIN)
        assert cors_headers(response) == {}


def test_a_publishable_key_from_an_unlisted_origin_is_403_on_every_ingest_route(api: Api) -> None:
    key = publishable(api, api.key("acme"), [SHOP])["key"]
    publishable(api, api.key("acme"), [ELSEWHERE])  # listed by another key: that key's list, not this one's
    for path in sorted(INGEST_PATHS):
        for origin in (ELSEWHERE, "null", SHOP.upper()):
            headers = {"Origin": origin, **api.as_(key)}
            response = api.client.post(path, json=INGEST_BODIES.get(path, {}), headers=headers)
            assert (response.status_code, response.json()) == (403, WRONG_ORIGIN), (path, origin)
            assert cors_headers(response) == {}
            assert response.headers["vary"] == "Origin"
    stored = api.client.get("/v1/events", headers=api.as_(api.key("acme", "viewer"))).json()["data"]
    assert stored == []


def test_two_origin_headers_match_no_list(api: Api) -> None:
    key = publishable(api, api.key("acme"), [SHOP])["key"]
    headers = [("Origin", SHOP), ("Origin", SHOP), ("Authorization", f"Bearer {key}")]
    response = api.client.post("/v1/events", json={"type": "t"}, headers=headers)
    assert (response.status_code, response.json()) == (403, WRONG_ORIGIN)


def test_without_an_origin_a_publishable_key_ingests_with_no_cors_headers(api: Api) -> None:
    """Not a browser (or one on the same origin): nothing to check, nothing to grant."""
    key = publishable(api, api.key("acme"), [SHOP])["key"]
    response = api.client.post("/v1/events", json={"type": "server_side"}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    assert cors_headers(response) == {}
    assert "vary" not in response.headers


def test_a_secret_key_in_a_browser_gets_no_cors_headers(api: Api) -> None:
    publishable(api, api.key("acme"), [SHOP])
    secret = api.key("acme", "ingest")
    response = api.client.post("/v1/events", json={"type": "t"}, headers={"Origin": SHOP, **api.as_(secret)})
    assert response.status_code == 200, response.text
    assert cors_headers(response) == {}
    assert response.headers["vary"] == "Origin"


def _operations(api: Api) -> list[tuple[str, str]]:
    """Every authenticated (method, path) of the OpenAPI document, path parameters filled in."""
    document = api.client.get("/openapi.json").json()
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method != "parameters" and operation.get("security"):
                filled = path
                while "{" in filled:
                    start, end = filled.index("{"), filled.index("}")
                    filled = filled[:start] + "x1" + filled[end + 1 :]
                found.append((method.upper(), filled))
    return found


def test_a_publishable_key_reads_and_configures_nothing(api: Api) -> None:
    key = publishable(api, api.key("acme"), [SHOP])["key"]
    refused = 0
    for method, path in _operations(api):
        if method == "POST" and path in INGEST_PATHS:
            continue
        for headers in (api.as_(key), {"Origin": SHOP, **api.as_(key)}):
            response = api.client.request(method, path, json={}, headers=headers)
            assert response.status_code == 403, (method, path, response.text)
            error = response.json()["error"]
            if path == "/api/v1/events/ingest":  # 002 ingests, but answers with what triggers did: not for ingest keys
                assert error == "the ingest role may not use this API: it needs admin or editor"
            else:
                [permission] = [p for p in ("read", "configure", "admin") if error.endswith(p)]
                assert error == f"a publishable key may only ingest, not {permission}"
            assert cors_headers(response) == {}
        refused += 1
    assert refused > 50  # the walk saw the document


def test_the_ingest_paths_are_the_routes_an_ingest_key_may_post_to(api: Api) -> None:
    """What the CORS middleware lists (headwater.app.INGEST_PATHS) against what the routes do."""
    key = api.key("acme", "ingest")
    ingesting = set()
    for method, path in _operations(api):
        if method != "POST":
            continue
        response = api.client.post(path, json=INGEST_BODIES.get(path, {}), headers=api.as_(key))
        if response.status_code != 403:
            ingesting.add(path)
    assert ingesting == INGEST_PATHS
