"""Idempotency as a state machine: hypothesis drives the real app (a test client on the current
backend, a worker beside it) and an in-memory model side by side, and after every step they
must agree.

The contract (README, "A resend of an accepted idempotency_key is a duplicate with the
original's id, whatever its body"): the first event with a key in a tenant and mode is
accepted; every later one with that key there, with the same body or another, in the same
request or a later one, from one client or several at once, before or after a restart, is a
`duplicate` carrying the original's id, and the stored event stays the original. The same key
in another tenant, or in the other mode, is another event.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from tests.conftest import WorkerThread, make_key

SCOPES = (("a", "live"), ("a", "test"), ("b", "live"))
KEYS = tuple(f"k{i}" for i in range(5))
CONCURRENT = 4
RULES = {
    "send", "resend_same", "resend_changed", "send_batch", "send_concurrently", "restart", "stored_as_the_model_says"
}  # fmt: skip

scopes = st.sampled_from(SCOPES)
keys = st.sampled_from(KEYS)
bodies = st.fixed_dictionaries(
    {
        "type": st.sampled_from(("buy", "view")),
        "subject": st.sampled_from(("s1", "s2")),
        "data": st.fixed_dictionaries({"n": st.integers(0, 3)}),
    }
)


@dataclass
class Original:
    id: str
    body: dict[str, Any]


class App:
    """The app in a test client, started again (a new app and store objects) on `restart`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = self._open()

    def _open(self) -> TestClient:
        client = TestClient(create_app(self.settings), raise_server_exceptions=False)
        client.__enter__()
        return client

    def restart(self) -> None:
        self.client.__exit__(None, None, None)
        self.client = self._open()

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    with WorkerThread(settings):
        running = App(settings)
        try:
            yield running
        finally:
            running.close()


class Idempotency(RuleBasedStateMachine):
    """Keys are prefixed per run: the store outlives each run, the model does not. The test
    sets the app, each scope's headers, and the counters of runs and of the rules that ran."""

    app: App
    headers: dict[tuple[str, str], dict[str, str]]
    runs: Iterator[int]
    ran: Counter[str]

    @initialize()
    def begin(self) -> None:
        self.prefix = f"r{next(self.runs)}-"
        self.model: dict[tuple[tuple[str, str], str], Original] = {}

    def expect(self, scope: tuple[str, str], key: str, body: dict[str, Any], result: dict[str, Any]) -> None:
        """What the model says of one event's result; records a new original."""
        original = self.model.get((scope, key))
        if original is None:
            assert result["status"] == "accepted", result
            self.model[(scope, key)] = Original(result["id"], body)
        else:
            assert (result["status"], result["id"]) == ("duplicate", original.id), result

    def post(self, scope: tuple[str, str], json: Any) -> list[dict[str, Any]]:
        response = self.app.client.post("/v1/events", json=json, headers=self.headers[scope])
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def event(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "idempotency_key": self.prefix + key}

    @rule(scope=scopes, key=keys, body=bodies)
    def send(self, scope: tuple[str, str], key: str, body: dict[str, Any]) -> None:
        self.ran["send"] += 1
        [result] = self.post(scope, self.event(key, body))
        self.expect(scope, key, body, result)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def resend_same(self, data: st.DataObject) -> None:
        self.ran["resend_same"] += 1
        (scope, key), original = data.draw(st.sampled_from(sorted(self.model.items(), key=repr)))
        [result] = self.post(scope, self.event(key, original.body))
        assert (result["status"], result["id"]) == ("duplicate", original.id)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), body=bodies)
    def resend_changed(self, data: st.DataObject, body: dict[str, Any]) -> None:
        """Another body under a stored key is the original's duplicate, not an update."""
        self.ran["resend_changed"] += 1
        (scope, key), original = data.draw(st.sampled_from(sorted(self.model.items(), key=repr)))
        changed = {**body, "data": {"n": original.body["data"]["n"] + 10}}
        [result] = self.post(scope, self.event(key, changed))
        assert (result["status"], result["id"]) == ("duplicate", original.id)

    @rule(scope=scopes, items=st.lists(st.tuples(keys, bodies), min_size=2, max_size=5))
    def send_batch(self, scope: tuple[str, str], items: list[tuple[str, dict[str, Any]]]) -> None:
        """A key twice in one batch: the second is the first's duplicate."""
        self.ran["send_batch"] += 1
        results = self.post(scope, {"events": [self.event(key, body) for key, body in items]})
        for (key, body), result in zip(items, results, strict=True):
            self.expect(scope, key, body, result)

    @rule(scope=scopes, key=keys, body=bodies)
    def send_concurrently(self, scope: tuple[str, str], key: str, body: dict[str, Any]) -> None:
        """The same event from several clients at once: one is accepted, all carry its id."""
        self.ran["send_concurrently"] += 1
        barrier = threading.Barrier(CONCURRENT)
        results: list[dict[str, Any]] = []

        def one() -> None:
            barrier.wait()
            results.extend(self.post(scope, self.event(key, body)))

        threads = [threading.Thread(target=one) for _ in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == CONCURRENT
        original = self.model.get((scope, key))
        statuses = sorted(r["status"] for r in results)
        if original is None:
            assert statuses == ["accepted"] + ["duplicate"] * (CONCURRENT - 1)
            [accepted] = [r for r in results if r["status"] == "accepted"]
            self.model[(scope, key)] = Original(accepted["id"], body)
        else:
            assert statuses == ["duplicate"] * CONCURRENT
        assert {r["id"] for r in results} == {self.model[(scope, key)].id}

    @rule()
    def restart(self) -> None:
        self.ran["restart"] += 1
        self.app.restart()

    @rule(scope=scopes)
    def stored_as_the_model_says(self, scope: tuple[str, str]) -> None:
        """Each key of the scope stored once, as its original: the one id, the first body."""
        self.ran["stored_as_the_model_says"] += 1
        response = self.app.client.get("/v1/events", params={"limit": 1000}, headers=self.headers[scope])
        assert response.status_code == 200, response.text
        stored = [e for e in response.json()["data"] if (e["idempotency_key"] or "").startswith(self.prefix)]
        expected = {k: o for (s, k), o in self.model.items() if s == scope}
        assert sorted(e["idempotency_key"] for e in stored) == sorted(self.prefix + k for k in expected)
        for event in stored:
            original = expected[event["idempotency_key"].removeprefix(self.prefix)]
            assert event["id"] == original.id
            assert (event["type"], event["subject"], event["data"]) == (
                original.body["type"],
                original.body["subject"],
                original.body["data"],
            )
            assert (event["tenant"], event["mode"]) == scope

    def teardown(self) -> None:
        for scope in SCOPES:
            self.stored_as_the_model_says(scope)


def test_idempotency_keys_behave_as_the_model_says(app: App) -> None:
    Idempotency.app = app
    Idempotency.headers = {(t, m): {"Authorization": f"Bearer {make_key(app.settings, t, mode=m)}"} for t, m in SCOPES}
    Idempotency.runs = itertools.count()
    Idempotency.ran = Counter()
    run_state_machine_as_test(
        Idempotency,
        settings=settings(
            max_examples=10,
            stateful_step_count=20,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # Derandomized: the same steps every time, and every kind of step among them.
    assert set(Idempotency.ran) == RULES, Idempotency.ran
