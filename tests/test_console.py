"""The web console (`/console`) in a real headless Chromium, driven through Playwright, against a
real `headwater serve`.

Debian's `/usr/bin/chromium` is the browser (`.ci/run` installs it), not one Playwright downloads.
One server serves the whole module; each test signs in with a key of a tenant of its own, so what
one test sends never shows on another's pages. Every test's page is watched: a console error, an
uncaught exception, or the key in any URL the page requested fails it (see `Tab.check`). Each
page's screenshot is saved under `test-artifacts/console/` (gitignored) for a person to look at.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Route, expect, sync_playwright

from headwater.config import Settings
from headwater.processing.consumer import FactsEngine
from tests.conftest import ROOT, ServerProcess, WorkerThread, make_key
from tests.processing.test_dead_letters import PoisonedTriggers
from tests.processing.test_webhooks import Receiver

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "console"
# Generous: four test processes share two cores; a wait that is long enough costs nothing.
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)  # every expect(...) here, not only the page's own waits


@dataclass
class Console:
    server: ServerProcess
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, tenant: str, role: str = "admin", mode: str = "live") -> str:
        # On a thread of its own: Playwright's sync API keeps an event loop running on this one.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(make_key, self.settings, tenant, role, mode).result()

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key}, timeout=90)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp("console") / "data"
    # A webhook to a loopback port: allowed, and given up on after two quick attempts.
    env = {"HEADWATER_ALLOW_PRIVATE_WEBHOOKS": "1", "HEADWATER_WEBHOOK_RETRY_SCHEDULE": "0,0.2"}
    server = ServerProcess(data_dir, env=env)
    server.start(timeout=60)
    server.drain()  # the server and its worker print as they go: keep the pipe from filling
    try:
        yield Console(server, replace(Settings(), data_dir=data_dir))
    finally:
        server.stop()
        server.kill()  # closes the output pipe (the process has exited by now)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield launch(playwright)


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@dataclass
class Tab:
    """A page of its own browser context, with what it logged and requested."""

    page: Page
    console: Console
    errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def sign_in(self, key: str) -> None:
        self.keys.append(key)
        self.page.goto(self.console.url + "/")
        self.page.fill("#key", key)
        self.page.click("#sign-in-form button[type=submit]")
        expect(self.page.locator("#who-role")).to_be_visible(timeout=WAIT_MS)

    def go(self, route: str) -> None:
        self.page.goto(f"{self.console.url}/console/#/{route}")

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def check(self) -> None:
        """No console error, no uncaught exception; no key in any URL, and each API request
        carried it in the X-API-Key header."""
        assert self.errors == []
        for request in self.requests:
            for key in self.keys:
                assert key not in request.url
        api_calls = [r for r in self.requests if "/v1/" in r.url]
        for request in api_calls:
            assert request.headers.get("x-api-key") in self.keys, request.url


@pytest.fixture
def tab(browser: Browser, console: Console) -> Iterator[Tab]:
    with open_tab(browser, console) as found:
        yield found


@contextlib.contextmanager
def open_tab(browser: Browser, console: Console) -> Iterator[Tab]:
    """A tab on `console`'s server, checked (`Tab.check`) when the block ends."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    found = Tab(page, console)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            found.errors.append(f"{message.text} at {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: found.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: found.requests.append(request))
    try:
        yield found
    finally:
        context.close()
    found.check()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint on 127.0.0.1 that records each request and answers from a script."""
    server = Receiver()
    yield server
    server.close()


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def loose_text(page: Page) -> list[str]:
    """The text nodes right in <main>, outside every element: none on a page built as meant
    (`Element.append` shows a stray null or undefined there as text)."""
    found: list[str] = page.locator("main").evaluate(
        "main => [...main.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.textContent)"
    )
    return found


T = TypeVar("T")


def eventually(check: Callable[[], T], what: str = "the condition", within: float = WAIT_MS / 1000) -> T:
    """What `check` returns once it is truthy, asked every 0.1 s, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.1)
    return found


def send(client: httpx.Client, *events: dict[str, Any]) -> list[str]:
    """Send events and wait for processing; their ids."""
    response = client.post("/v1/events?wait=processed", json={"events": list(events)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * len(events), results
    return [r["id"] for r in results]


# The shell: routes, headers, sign-in.


def test_root_redirects_to_the_console_which_is_served_with_strict_headers(console: Console) -> None:
    with httpx.Client(base_url=console.url) as client:
        root = client.get("/")
        assert (root.status_code, root.headers["location"]) == (307, "/console/")
        bare = client.get("/console")
        assert (bare.status_code, bare.headers["location"]) == (307, f"{console.url}/console/")
        for path, content_type in [
            ("/console/", "text/html; charset=utf-8"),
            ("/console/console.css", "text/css; charset=utf-8"),
            ("/console/js/main.js", "text/javascript; charset=utf-8"),
        ]:
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == content_type
            assert response.headers["content-security-policy"] == (
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
                "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            )
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["x-frame-options"] == "DENY"
        missing = client.get("/console/nothing-here.js")
        assert missing.status_code == 404


def test_no_file_of_the_console_has_inline_script_style_or_html_injection() -> None:
    """What the CSP would refuse at run time, and innerHTML, which it would not, are not in the source."""
    static = ROOT / "headwater" / "console" / "static"
    html = (static / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert re.findall(r"<style|\sstyle=|\son[a-z]+=", html) == []
    for script in static.rglob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{script.name} uses {sink}"


def test_sign_in_shows_tenant_mode_and_role_and_sign_out_forgets_the_key(tab: Tab, console: Console) -> None:
    name = tenant()
    key = console.key(name, "viewer")
    tab.sign_in(key)
    page = tab.page
    assert page.url == f"{console.url}/console/"
    expect(page.locator("#who-tenant")).to_have_text(f"tenant {name}")
    expect(page.locator("#who-mode")).to_have_text("mode live")
    expect(page.locator("#who-role")).to_have_text("role viewer")
    assert page.evaluate("sessionStorage.getItem('headwater.key')") == key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    tab.screenshot("live-empty")

    page.reload()  # the key outlives a reload of the tab
    expect(page.locator("#who-role")).to_have_text("role viewer")

    page.click("#sign-out")
    expect(page.locator("#sign-in-form")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    tab.screenshot("sign-in")


def test_a_refused_key_is_said_so_and_not_kept(tab: Tab, console: Console) -> None:
    page = tab.page
    page.goto(console.url + "/")
    wrong = "hw_live_" + "A" * 38
    tab.keys.append(wrong)
    page.fill("#key", wrong)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#sign-in-error")).to_have_text("That key was refused: check it and try again.")
    assert page.evaluate("sessionStorage.length") == 0
    # Chromium logs every 4xx a page's fetch gets; this one is the refusal the test asked for.
    assert [e for e in tab.errors if "status of 401" in e] == tab.errors != []
    tab.errors.clear()


# Live view and the event.


def test_an_event_shows_live_and_opens_with_its_json_and_effects(tab: Tab, console: Console) -> None:
    name = tenant()
    key = console.key(name)
    with console.client(key) as client:
        trigger = client.post(
            "/v1/triggers",
            json={
                "name": "big spender",
                "event_types": ["purchase"],
                "conditions": {"field": "data.amount", "op": "gt", "value": 100},
                "action": {"type": "recommend", "config": {"decisionFlowId": "df_upsell"}},
            },
        )
        assert trigger.status_code == 201, trigger.text
        tab.sign_in(key)
        page = tab.page
        expect(page.locator("#live-status")).to_have_text("live")
        [first] = send(client, {"type": "page_view", "subject": "cust_1", "data": {"path": "/"}})
        [second] = send(client, {"type": "purchase", "subject": "cust_1", "source": "pos", "data": {"amount": 150}})

        rows = page.locator("#live-rows tr")
        expect(rows).to_have_count(2)
        assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [second, first]  # newest first
        expect(rows.nth(0)).to_contain_text("purchase")
        expect(page.locator("#live-count")).to_have_text("2 events")

        rows.nth(0).click()
        detail = page.locator("#event-detail")
        expect(detail.locator("h2")).to_have_text("purchase")
        event = client.get(f"/v1/events/{second}").json()
        shown = detail.locator("pre.json").text_content()
        assert shown is not None
        assert __import__("json").loads(shown) == event
        effects = page.locator("#event-effects")
        expect(effects).to_contain_text("custom.purchase")  # its fact
        expect(effects).to_contain_text("big spender")  # the trigger it fired
        expect(effects).to_contain_text("recommend")
        expect(effects.locator(".pending")).to_have_count(0)
        tab.screenshot("live")

        page.goto(f"{console.url}/console/#/events/{second}")
        expect(page.locator("#event-detail h2")).to_have_text("purchase")
        expect(page.locator("#event-effects")).to_contain_text("big spender")
        tab.screenshot("event")


def test_the_live_view_filters_by_type_subject_and_source(tab: Tab, console: Console) -> None:
    key = console.key(tenant())
    with console.client(key) as client:
        tab.sign_in(key)
        page = tab.page
        page.fill("#live-filters input[name=type]", "signup")
        page.fill("#live-filters input[name=source]", "web")
        page.click("#live-filters button[type=submit]")
        expect(page.locator("#live-status")).to_have_text("live")
        [wanted] = send(
            client,
            {"type": "purchase", "source": "web"},
            {"type": "signup", "source": "app"},
            {"type": "signup", "source": "web", "subject": "u1"},
        )[2:]
        rows = page.locator("#live-rows tr")
        expect(rows).to_have_count(1)
        assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [wanted]


def test_event_data_is_shown_as_text_and_never_runs(tab: Tab, console: Console) -> None:
    key = console.key(tenant())
    attack = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    dialogs: list[str] = []
    tab.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    with console.client(key) as client:
        tab.sign_in(key)
        page = tab.page
        expect(page.locator("#live-status")).to_have_text("live")
        send(client, {"type": "comment", "subject": attack, "source": "<b>bold</b>", "data": {"html": attack}})
        row = page.locator("#live-rows tr").first
        expect(row).to_contain_text(attack)  # the subject, as the literal text
        row.click()
        expect(page.locator("#event-detail pre.json")).to_contain_text(
            '"html": "<img src=x onerror=\\"window.__xss=1\\">'
        )
        expect(page.locator("#event-detail dl")).to_contain_text(attack)
        expect(page.locator("#event-effects")).to_contain_text("custom.comment")
        tab.screenshot("xss")
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script, main b").count() == 0
    assert dialogs == []


def test_a_page_left_while_it_loads_shows_nothing_and_stops(tab: Tab, console: Console) -> None:
    """The catalog's and the processing page's first requests are held until the live view is
    shown: what they answer then must not land on the live view, and the processing page's
    refresh every 2 s must not start. The page's timers run on Playwright's clock."""
    page = tab.page
    page.clock.install()
    tab.sign_in(console.key(tenant()))
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    for path in ("**/v1/event-types", "**/v1/processing"):
        page.route(path, hold)
    with page.expect_request("**/v1/event-types"):
        tab.go("catalog")
    with page.expect_request("**/v1/processing"):
        tab.go("processing")
    tab.go("live")
    expect(page.locator("#live-status")).to_have_text("live")
    for route in held:
        with page.expect_response(route.request.url) as answer:
            route.continue_()
        answer.value.finished()  # its body read too, which the page's fetch then resolves with
    page.clock.run_for(10_000)  # the held answers are read, and five refreshes would be due
    assert page.locator("main h1").all_text_contents() == ["Live events"]
    assert page.locator("main").count() == 1
    assert len([r for r in tab.requests if r.url.endswith("/v1/processing")]) == 1


# Quarantine and webhooks: the actions that fix what went wrong.


def test_a_quarantined_item_is_replayed_from_its_page_once_its_schema_is_fixed(tab: Tab, console: Console) -> None:
    key = console.key(tenant())
    with console.client(key) as client:
        strict = {"type": "object", "required": ["plan"], "properties": {"plan": {"type": "string"}}}
        put = client.put("/v1/schemas/signup", json={"schema": strict, "enforcement": "strict"})
        assert put.status_code == 201, put.text
        sent = client.post("/v1/events", json={"events": [{"type": "signup", "subject": "u1", "data": {"plan": 5}}]})
        assert [r["status"] for r in sent.json()["results"]] == ["rejected"], sent.text
        [item] = client.get("/v1/quarantine").json()["data"]
        [reason] = item["reasons"]

        tab.sign_in(key)
        tab.go("quarantine")
        page = tab.page
        row = page.locator(f"#quarantine tr[data-id='{item['id']}']")
        expect(row).to_contain_text("signup")
        expect(row.locator("ul.reasons")).to_have_text(f"{reason['field']} {reason['code']}: {reason['message']}")
        expect(row).to_contain_text("quarantined")
        assert loose_text(page) == []
        tab.screenshot("quarantine")

        row.locator("button.replay").click()  # too early: the schema still refuses it
        result = page.locator("#quarantine-result")
        expect(result).to_have_text("Replayed 0, duplicates 0, still rejected 1.")
        expect(result).to_have_class("notice error")
        expect(row.locator("button.replay")).to_be_enabled()  # still there, to try again
        assert client.get("/v1/events", params={"type": "signup"}).json()["data"] == []

        # Fixed: a plan may be a number too.
        loose = {"type": "object", "required": ["plan"], "properties": {"plan": {"type": ["string", "number"]}}}
        assert client.put("/v1/schemas/signup", json={"schema": loose, "enforcement": "strict"}).status_code == 201
        row.locator("button.replay").click()
        expect(result).to_contain_text("Replayed 1, duplicates 0, still rejected 0.")
        expect(result).to_have_class("notice ok")
        expect(page.locator("#quarantine")).to_have_text("Nothing in the quarantine.")  # none left to replay
        [event] = client.get("/v1/events", params={"type": "signup"}).json()["data"]
        assert (event["subject"], event["data"]) == ("u1", {"plan": 5})
        expect(result.locator("a.event-link")).to_have_text(event["id"])

        page.select_option("#quarantine-status", "replayed")
        page.click("form.filters button[type=submit]")
        expect(row).to_contain_text("replayed")
        expect(row.locator("a.event-link")).to_have_text(event["id"])
        assert row.locator("button.replay").count() == 0
        assert loose_text(page) == []
        tab.screenshot("quarantine-replayed")
        [replayed] = client.get("/v1/quarantine", params={"status": "replayed"}).json()["data"]
        assert (replayed["id"], replayed["replayed_event_id"]) == (item["id"], event["id"])

        row.locator("a.event-link").click()
        expect(page.locator("#event-detail h2")).to_have_text("signup")
        expect(page.locator("#event-effects")).to_contain_text("custom.signup")


def test_a_dead_lettered_delivery_is_retried_from_the_webhooks_page(
    tab: Tab, console: Console, receiver: Receiver
) -> None:
    key = console.key(tenant())
    receiver.script("/hook", *[500] * 10)  # more than the two quick attempts the server makes
    with console.client(key) as client:
        created = client.post("/v1/webhooks", json={"url": receiver.url("/hook"), "subscriptions": ["event.purchase"]})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        [event_id] = send(client, {"type": "purchase", "subject": "cust_1", "data": {"amount": 5}})
        [failed] = eventually(lambda: client.get("/v1/deliveries", params={"status": "failed"}).json()["data"])
        assert (failed["topic"], failed["last_status"]) == ("event.purchase", 500)
        tried = len(receiver.at("/hook"))
        assert tried == failed["attempts"] >= 2
        receiver.script("/hook")  # from now on: 200

        tab.sign_in(key)
        tab.go("webhooks")
        page = tab.page
        expect(page.locator(f"#endpoints tr[data-id='{endpoint['id']}']")).to_contain_text(receiver.url("/hook"))
        expect(page.locator("#attempts tbody tr")).to_have_count(tried)
        expect(page.locator("#attempts tbody tr").first).to_contain_text("500")
        row = page.locator(f"#failed-deliveries tr[data-id='{failed['id']}']")
        expect(row).to_contain_text("event.purchase")
        expect(row).to_contain_text("500")
        assert loose_text(page) == []
        tab.screenshot("webhooks-failed")

        row.locator("button.retry").click()
        result = page.locator("#webhooks-result")
        expect(result).to_have_text(f"Delivery {failed['id']} queued again (pending).")
        expect(page.locator("#failed-deliveries")).to_have_text("No failed delivery.")
        expect(result).to_have_text(f"Delivery {failed['id']} delivered (attempt {tried + 1}).")
        expect(page.locator("#attempts tbody tr")).to_have_count(tried + 1)
        expect(page.locator("#attempts tbody tr").first).to_contain_text("200")
        assert loose_text(page) == []
        tab.screenshot("webhooks-retried")

        delivery = client.get(f"/v1/deliveries/{failed['id']}").json()
        assert (delivery["status"], delivery["attempts"]) == ("delivered", tried + 1)
    requests = receiver.at("/hook")
    assert len(requests) == tried + 1
    last = requests[-1]
    assert {r.headers["webhook-id"] for r in requests} == {failed["id"]}  # the same id on every attempt
    assert last.verify(endpoint["secret"])["data"]["event"]["id"] == event_id  # signed with the endpoint's secret


# Every page, with data.


def test_every_page_shows_the_tenants_data_without_an_error(tab: Tab, console: Console, receiver: Receiver) -> None:
    key = console.key(tenant())
    with console.client(key) as client:
        rule = {
            "name": "points for purchases",
            "event_types": ["purchase"],
            "action": {"type": "award_points", "config": {"points": 10}},
        }
        trigger = client.post("/v1/triggers", json=rule)
        assert trigger.status_code == 201, trigger.text
        assert client.post("/v1/badges", json={"key": "first_purchase", "name": "First purchase"}).status_code == 201
        badge_rule = {
            "name": "a badge for a purchase",
            "event_types": ["purchase"],
            "action": {"type": "award_badge", "config": {"badge": "first_purchase"}},
        }
        assert client.post("/v1/triggers", json=badge_rule).status_code == 201
        challenge = {"name": "two purchases", "fact_type": "custom.purchase", "metric": {"count": True}, "target": 2}
        assert client.post("/v1/challenges", json=challenge).status_code == 201
        hook = client.post("/v1/webhooks", json={"url": receiver.url("/hook"), "subscriptions": ["event.purchase"]})
        assert hook.status_code == 201, hook.text
        strict = {"type": "object", "required": ["plan"]}
        assert client.put("/v1/schemas/signup", json={"schema": strict, "enforcement": "strict"}).status_code == 201

        tab.sign_in(key)
        page = tab.page
        expect(page.locator("#live-status")).to_have_text("live")
        [event_id] = send(client, {"type": "purchase", "subject": "cust_1", "data": {"amount": 150}})
        rejected = client.post("/v1/events", json={"events": [{"type": "signup", "subject": "u1", "data": {}}]})
        assert [r["status"] for r in rejected.json()["results"]] == ["rejected"], rejected.text
        [quarantined] = client.get("/v1/quarantine").json()["data"]
        [reason] = quarantined["reasons"]
        eventually(lambda: receiver.at("/hook"), "the purchase's webhook delivery")
        eventually(lambda: client.get("/v1/participants/cust_1").json()["points"] == 10, "the points awarded")
        eventually(lambda: client.get("/v1/participants/cust_1").json()["badges"], "the badge awarded")
        [delivery] = eventually(lambda: client.get("/v1/deliveries", params={"status": "delivered"}).json()["data"])
        processing = client.get("/v1/processing").json()

        # The awards are events too, each naming the purchase that caused it.
        def all_three() -> list[dict[str, Any]]:  # the awards are logged after they are applied
            found: list[dict[str, Any]] = client.get("/v1/events").json()["data"]
            return found if len(found) == 3 else []

        logged = sorted(eventually(all_three, "the purchase and its two awards"), key=lambda e: -e["seq"])
        *awards, purchase_event = logged
        assert purchase_event["id"] == event_id
        assert sorted(a["type"] for a in awards) == ["badge.awarded", "points.awarded"]
        assert [a["data"]["cause_event_id"] for a in awards] == [event_id, event_id]

        rows = page.locator("#live-rows tr")
        expect(rows).to_have_count(3)
        assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [e["id"] for e in logged]  # newest first
        expect(rows.nth(2)).to_contain_text("purchase")
        expect(rows.nth(2)).to_contain_text("cust_1")
        expect(page.locator("#live-count")).to_have_text("3 events")
        assert loose_text(page) == []
        tab.screenshot("page-live")

        tab.go("catalog")
        purchase = page.locator("#catalog tr[data-type=purchase]")
        expect(purchase.locator("td").nth(1)).to_have_text("1")  # its count
        expect(purchase).to_contain_text("amount: integer")
        signup = page.locator("#catalog tr[data-type=signup]")
        expect(signup.locator("td").nth(1)).to_have_text("0")  # its schema refused the only one sent
        expect(signup).to_contain_text("v1 strict")
        for award in ("points.awarded", "badge.awarded"):
            expect(page.locator(f"#catalog tr[data-type='{award}'] td").nth(1)).to_have_text("1")
        assert loose_text(page) == []
        tab.screenshot("page-catalog")

        tab.go("quarantine")
        item = page.locator(f"#quarantine tr[data-id='{quarantined['id']}']")
        expect(item).to_contain_text("signup")
        expect(item.locator("ul.reasons")).to_contain_text(reason["message"])
        assert loose_text(page) == []
        tab.screenshot("page-quarantine")

        tab.go("triggers")
        row = page.locator(f"#triggers tr[data-id='{trigger.json()['id']}']")
        expect(row).to_contain_text("points for purchases")
        expect(row).to_contain_text("award_points")
        expect(row).to_contain_text("enabled")
        row.locator("a").click()
        expect(page.locator("#firings")).to_contain_text(event_id)
        expect(page.locator("#firings")).to_contain_text("dispatched")
        page.click("#dry-run button[type=submit]")  # the saved trigger on the sample purchase
        expect(page.locator("#dry-run-result .chip")).to_have_text("matched")
        expect(page.locator("#dry-run-result pre.json")).to_contain_text('"matched": true')
        assert loose_text(page) == []
        tab.screenshot("page-triggers")
        row.locator("button.toggle").click()
        expect(page.locator("#triggers-result")).to_have_text("points for purchases: disabled.")
        expect(row).to_contain_text("disabled")
        assert client.get(f"/v1/triggers/{trigger.json()['id']}").json()["enabled"] is False

        tab.go("webhooks")
        expect(page.locator(f"#endpoints tr[data-id='{hook.json()['id']}']")).to_contain_text(receiver.url("/hook"))
        attempt = page.locator("#attempts tbody tr")
        expect(attempt).to_have_count(1)
        expect(attempt).to_contain_text(delivery["id"])
        expect(attempt).to_contain_text("200")
        expect(page.locator("#failed-deliveries")).to_have_text("No failed delivery.")
        assert loose_text(page) == []
        tab.screenshot("page-webhooks")

        tab.go("processing")
        consumers = page.locator("#consumers tbody tr")
        expect(consumers).to_have_count(len(processing["consumers"]))
        names = {c["name"] for c in processing["consumers"]}
        assert names == {"facts", "triggers", "catalog"}, names
        for name in names:
            expect(consumers.filter(has_text=name).first).to_be_visible()
        expect(page.locator("#processing-summary")).to_contain_text("log head (seq)")
        expect(page.locator("#dead-letters")).to_have_text("No dead letter: every event was processed.")
        assert loose_text(page) == []
        tab.screenshot("page-processing")

        tab.go("gamification")
        leader = page.locator("#leaderboard tbody tr")
        expect(leader).to_have_count(1)
        expect(leader.locator("td")).to_have_text(["1", "cust_1", "10", re.compile(r".*"), re.compile(r".+")])
        expect(page.locator("#leaderboard-bucket")).to_have_text("All time")
        assert loose_text(page) == []
        tab.screenshot("page-gamification")
        today = client.get("/v1/leaderboards/points", params={"period": "daily"}).json()
        page.select_option("#leaderboard-period", "daily")
        expect(page.locator("#leaderboard-bucket")).to_have_text(f"Period {today['bucket']}")
        expect(leader.locator("td").nth(2)).to_have_text("10")

        leader.locator("a").click()
        expect(page).to_have_url(re.compile(r"#/participants/cust_1$"))
        expect(page.locator("main h1")).to_have_text("cust_1")
        expect(page.locator("#participant-summary .stat")).to_have_text(["10points", re.compile(r".+level"), "1badge"])
        expect(page.locator("#participant-badges tbody tr")).to_contain_text("first_purchase")
        progress = page.locator("#participant-challenges tbody tr")
        expect(progress.locator("td")).to_have_text(["two purchases", "1 / 2", "—", "—"])
        expect(progress.locator("progress")).to_have_attribute("value", "1")
        assert loose_text(page) == []
        tab.screenshot("page-participant")

        tab.go("charts")
        stats = client.get("/v1/stats", params={"minutes": 60}).json()
        expect(page.locator("#ingest-total")).to_have_text("3 events in this range.")  # the purchase and its awards
        busy = [m for m in stats["ingest"] if m["events"]]
        assert sum(m["events"] for m in busy) == 3, stats
        expect(page.locator("#ingest-chart rect.bar")).to_have_count(len(busy))
        expect(page.locator("#rejections-chart")).to_contain_text(reason["code"])
        assert loose_text(page) == []
        tab.screenshot("page-charts")
        page.select_option("#stats-minutes", "360")
        expect(page.locator("#ingest-chart svg")).to_have_attribute("aria-label", "3 events in the last 360 minutes")
        expect(page.locator("#ingest-chart rect.bar")).to_have_count(len(busy))

        tab.go(f"events/{event_id}")
        expect(page.locator("#event-detail h2")).to_have_text("purchase")
        effects = page.locator("#event-effects")
        expect(effects).to_contain_text("custom.purchase")
        expect(effects).to_contain_text("points for purchases")
        expect(effects).to_contain_text(delivery["id"])
        expect(effects).to_contain_text("delivered")
        expect(effects.locator(".pending")).to_have_count(0)
        assert loose_text(page) == []
        tab.screenshot("page-event")


def test_a_viewer_sees_quarantine_triggers_and_processing_without_buttons_that_change_things(
    tab: Tab, console: Console
) -> None:
    name = tenant()
    with console.client(console.key(name)) as admin:
        rule = {"name": "watch", "event_types": ["purchase"], "action": {"type": "recommend"}}
        assert admin.post("/v1/triggers", json=rule).status_code == 201
        strict = {"schema": {"type": "object", "required": ["plan"]}, "enforcement": "strict"}
        assert admin.put("/v1/schemas/signup", json=strict).status_code == 201
        sent = admin.post("/v1/events", json={"events": [{"type": "signup", "data": {}}]})
        assert [r["status"] for r in sent.json()["results"]] == ["rejected"], sent.text
    tab.sign_in(console.key(name, "viewer"))
    page = tab.page
    tab.go("quarantine")
    expect(page.locator("#quarantine tbody tr")).to_contain_text("signup")
    assert page.locator("#quarantine button").count() == 0  # no replay
    assert loose_text(page) == []
    tab.screenshot("viewer-quarantine")
    tab.go("triggers")
    expect(page.locator("#triggers tbody tr")).to_contain_text("watch")
    assert page.locator("#triggers button").count() == 0  # no switching it off
    expect(page.locator("#dry-run")).to_contain_text("A dry run needs an admin or editor key.")
    assert page.locator("#dry-run button").count() == 0
    assert loose_text(page) == []
    tab.screenshot("viewer-triggers")
    # The log's lags are the whole server's (GET /v1/processing is for admin keys): not asked for.
    tab.go("processing")
    expect(page.locator("#processing-admin-only")).to_contain_text("sign in with an admin key to see it")
    expect(page.locator("#dead-letters")).to_be_visible()
    assert [r.url for r in tab.requests if "/v1/processing" in r.url] == []
    tab.screenshot("viewer-processing")


def test_a_participant_with_no_facts_is_said_so(tab: Tab, console: Console) -> None:
    tab.sign_in(console.key(tenant()))
    page = tab.page
    tab.go("gamification")
    page.fill("#participant-lookup input[name=participant]", "nobody yet")
    page.click("#participant-lookup button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/participants/nobody%20yet$"))
    expect(page.locator("main h1")).to_have_text("nobody yet")
    expect(page.locator("main p.empty")).to_have_text("No fact of this participant yet.")
    assert loose_text(page) == []
    # Chromium logs the 404 the page asked for and showed as above.
    assert [e for e in tab.errors if "status of 404" in e] == tab.errors != []
    tab.errors.clear()


def test_a_dead_letter_is_retried_from_the_processing_page(browser: Browser, tmp_path: Path) -> None:
    """A server with no worker of its own, and a worker (on a thread here) whose trigger engine
    raises for `poison` events until told not to: the event is dead-lettered, and the page's
    Retry applies it once the cause is gone."""
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, args=("--no-worker",))
    server.start(timeout=60)
    server.drain()
    poisoned = PoisonedTriggers()
    console = Console(server, replace(Settings(), data_dir=data_dir))
    try:
        with WorkerThread(console.settings, engines=(FactsEngine(), poisoned)), open_tab(browser, console) as tab:
            key = console.key(tenant())
            with console.client(key) as client:
                rule = {"name": "all", "event_types": ["poison"], "action": {"type": "recommend"}}
                assert client.post("/v1/triggers", json=rule).status_code == 201
                [poison] = send(client, {"type": "poison", "subject": "s1"})
                tab.sign_in(key)
                page = tab.page
                tab.go("processing")
                row = page.locator("#dead-letters tbody tr[data-id^=dlq_]")
                expect(row).to_have_count(1)
                expect(row).to_contain_text("RuntimeError: this rule raises on purpose")
                expect(row).to_contain_text("triggers")
                expect(row.locator(".chip")).to_have_text("dead")
                expect(page.locator("#consumers tbody tr").first).to_be_visible()
                tab.screenshot("processing-dead-letter")
                poisoned.poisoned = False
                row.locator("button.retry").click()
                expect(page.locator("#processing-result")).to_contain_text(": retrying.")
                expect(row.locator(".chip")).to_have_text("resolved")  # reloaded until the worker applied it
                assert row.locator("button").count() == 0
                tab.screenshot("processing-resolved")
                actions = client.get("/v1/actions", params={"event": poison}).json()["data"]
                assert [(a["event_id"], a["status"]) for a in actions] == [(poison, "dispatched")]
    finally:
        server.stop()
        server.kill()
