"""Erasure: `DELETE /v1/subjects/{id}` and `POST /v1/erasures` delete the events and everything
derived from them in the key's tenant and mode, answer with a receipt of the rows deleted, leave
nothing any read route or a replay can find, and leave every other subject, mode and tenant as
it was."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.ids import fact_id_for
from tests.conftest import Api, WorkerThread, run_cli, store_args
from tests.data_protection import DERIVED_TABLES, define, get, ingest, purchases, rows
from tests.processing import settle

ALICE_TIMES = ["2026-03-01T10:00:00Z", "2026-03-02T10:00:00Z", "2026-03-20T10:00:00Z"]
BOB_TIMES = ["2026-03-01T12:00:00Z", "2026-03-03T12:00:00Z"]
ZERO = {
    "events": 0,
    "quarantined": 0,
    "facts": 0,
    "fact_effects": 0,
    "actions": 0,
    "enrollments": 0,
    "deliveries": 0,
    "attempts": 0,
    "window_points": 0,
    "dead_letters": 0,
    "profiles": 0,
    "progress": 0,
    "completions": 0,
    "badges": 0,
    "points": 0,
}


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    # No webhook sends: the endpoint is not reachable from the tests, and its messages are kept.
    quiet = replace(settings, webhook_worker=False)
    with WorkerThread(quiet), TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield Api(client, quiet)


def catalog_counts(api: Api, key: str) -> dict[str, int]:
    return {entry["type"]: entry["count"] for entry in get(api, key, "/v1/event-types")[1]["data"]}


def _subject_of(row: dict[str, Any]) -> Any:
    return row.get("subject", row.get("participant_id"))


def stored_of(settings: Settings, subject: str) -> dict[str, int]:
    """What the store holds of the subject, counted as a receipt counts it."""
    events = {r["id"] for r in rows(settings, "events") if r["subject"] == subject}
    facts = {fact_id_for(e) for e in events}
    actions = {r["id"] for r in rows(settings, "actions") if r["subject"] == subject}
    deliveries = {r["id"] for r in rows(settings, "webhook_deliveries") if r["message_key"] in events | actions}
    derived = {t: [r for r in rows(settings, t) if _subject_of(r) == subject] for t in DERIVED_TABLES}
    return {
        "events": len(events),
        "quarantined": sum(f'"subject":"{subject}"' in (r["draft"] or "") for r in rows(settings, "quarantine")),
        "facts": len(events),
        "fact_effects": sum(r["fact_id"] in facts for r in rows(settings, "fact_effects")),
        "actions": len(actions),
        "enrollments": len(derived["enrollments"]),
        "deliveries": len(deliveries),
        "attempts": sum(r["delivery_id"] in deliveries for r in rows(settings, "webhook_attempts")),
        "window_points": len(derived["trigger_windows"]),
        "dead_letters": sum(r["event_id"] in events for r in rows(settings, "dead_letters")),
        "profiles": len(derived["profiles"]),
        "progress": len(derived["challenge_progress"]) + len(derived["challenge_values"]),
        "completions": len(derived["challenge_completions"]),
        "badges": len(derived["badge_awards"]),
        "points": len(derived["points_ledger"]),
    }


def _ranked(board: dict[str, Any], subject: str) -> list[dict[str, Any]]:
    return [row for row in board["data"] if row["participant_id"] == subject]


def reads_of(api: Api, key: str, subject: str, event_ids: list[str], challenge: str) -> dict[str, Any]:
    """What every read route shows of the subject."""
    events = get(api, key, "/v1/events", subject=subject, limit=1000)[1]["data"]
    return {
        "events": [e["id"] for e in events],
        "by_id": [get(api, key, f"/v1/events/{e}")[0] for e in event_ids],
        "facts": get(api, key, "/v1/facts", participant=subject)[1]["data"],
        "actions": get(api, key, "/v1/actions", subject=subject)[1]["data"],
        "quarantine": [q["id"] for q in get(api, key, "/v1/quarantine")[1]["data"] if subject in (q["raw"] or "")],
        "participant": get(api, key, f"/v1/participants/{subject}")[0],
        "points_board": [
            r for r in get(api, key, "/v1/leaderboards/points")[1]["data"] if r["participant_id"] == subject
        ],
        "challenge_board": [
            r
            for r in get(api, key, f"/v1/challenges/{challenge}/leaderboard")[1]["data"]
            if r["participant_id"] == subject
        ],
        "profile": get(api, key, f"/v1/subjects/{subject}")[0],
        "journey": [e for e in get(api, key, "/v1/journeys/vip/enrollments")[1]["data"] if e["subject"] == subject],
    }


GONE = {
    "events": [],
    "facts": [],
    "actions": [],
    "quarantine": [],
    "participant": 404,
    "points_board": [],
    "challenge_board": [],
    "profile": 404,
    "journey": [],
}


def world(api: Api, key: str) -> tuple[dict[str, str], list[str]]:
    ids = define(api, key)
    results = ingest(
        api,
        key,
        [
            *purchases("alice", ALICE_TIMES),
            *purchases("bob", BOB_TIMES),
            {"type": "order", "subject": "alice", "data": {}},  # quarantined by the strict schema
        ],
    )
    return ids, [r["id"] for r in results if r["id"] is not None]


def test_erasing_a_subject_deletes_everything_of_it_and_a_replay_brings_none_back(api: Api) -> None:
    key = api.key()
    ids, _ = world(api, key)
    alice_events = [r["id"] for r in rows(api.settings, "events") if r["subject"] == "alice"]
    before = stored_of(api.settings, "alice")
    # Alice has something of every kind but attempts (no send) and dead letters (nothing failed).
    assert [kind for kind, n in before.items() if not n] == ["attempts", "dead_letters"]
    bob = reads_of(api, key, "bob", [], ids["challenge"])
    catalog = catalog_counts(api, key)
    alice_types = Counter(r["type"] for r in rows(api.settings, "events") if r["subject"] == "alice")

    response = api.client.delete("/v1/subjects/alice", headers=api.as_(key))

    assert response.status_code == 200
    assert response.json() == {"subject": "alice", "deleted": before}
    assert stored_of(api.settings, "alice") == ZERO
    gone = reads_of(api, key, "alice", alice_events, ids["challenge"])
    assert gone == {**GONE, "by_id": [404] * len(alice_events)}
    # Bob, second on both leaderboards, is now first: Alice no longer ranks.
    assert [r["rank"] for r in bob["points_board"] + bob["challenge_board"]] == [2, 2]
    bob = {
        **bob,
        "points_board": [{**bob["points_board"][0], "rank": 1}],
        "challenge_board": [{**bob["challenge_board"][0], "rank": 1}],
    }
    assert reads_of(api, key, "bob", [], ids["challenge"]) == bob
    # The catalog no longer counts them.
    assert catalog_counts(api, key) == {t: n - alice_types[t] for t, n in catalog.items() if n > alice_types[t]}

    result = run_cli("replay", *store_args(api.settings))
    assert "replayed" in result.stdout
    settle(api, key)
    assert stored_of(api.settings, "alice") == ZERO
    assert reads_of(api, key, "alice", alice_events, ids["challenge"]) == {**GONE, "by_id": [404] * len(alice_events)}
    replayed = reads_of(api, key, "bob", [], ids["challenge"])
    # A replay stamps trigger actions (and their enrolments) with the receive time, not the clock's.
    for stamped in ("actions", "journey"):
        assert [r["id"] for r in replayed.pop(stamped)] == [r["id"] for r in bob[stamped]]
    assert replayed == {k: v for k, v in bob.items() if k not in ("actions", "journey")}
    # Erasing again finds nothing.
    again = api.client.delete("/v1/subjects/alice", headers=api.as_(key))
    assert again.json() == {"subject": "alice", "deleted": ZERO}


def test_a_subject_is_erased_only_in_the_keys_tenant_and_mode(api: Api) -> None:
    live, test, other = api.key(), api.key(mode="test"), api.key(tenant="globex")
    for key, tenant in ((live, "acme"), (test, "acme"), (other, "globex")):
        ingest(api, key, purchases("alice", ALICE_TIMES), tenant)

    response = api.client.delete("/v1/subjects/alice", headers=api.as_(test))

    assert response.json()["deleted"]["events"] == 3
    assert get(api, test, "/v1/events", subject="alice")[1]["data"] == []
    assert len(get(api, live, "/v1/events", subject="alice")[1]["data"]) == 3
    assert len(get(api, other, "/v1/events", subject="alice")[1]["data"]) == 3


def test_erasing_a_time_range_deletes_its_events_and_what_hangs_off_them(api: Api) -> None:
    key = api.key()
    _, event_ids = world(api, key)
    response = api.client.post(
        "/v1/erasures", json={"from": "2026-03-01", "to": "2026-03-02T00:00:00Z"}, headers=api.as_(key)
    )

    assert response.status_code == 200
    body = response.json()
    assert body["from"] == "2026-03-01T00:00:00Z" and body["to"] == "2026-03-02T00:00:00Z"
    # The 1 March purchases of both, and the points the trigger awarded for them (at their time).
    assert body["deleted"]["events"] == 4
    left = get(api, key, "/v1/events", limit=1000, **{"from": "2026-03-01", "to": "2026-03-01"})[1]["data"]
    assert left == []
    assert [get(api, key, f"/v1/events/{e}")[0] for e in event_ids] == [404, 200, 200, 404, 200]
    actions = get(api, key, "/v1/actions", limit=1000)[1]["data"]
    assert {a["event_id"] for a in actions} & {event_ids[0], event_ids[3]} == set()
    assert {a["event_id"] for a in actions} >= {event_ids[1], event_ids[2], event_ids[4]}


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"from": "2026-03-01"}, "to", "required"),
        ({"from": "yesterday", "to": "2026-03-01"}, "from", "invalid_format"),
        ({"from": 1, "to": "2026-03-01"}, "from", "invalid_type"),
        ({"from": "2026-03-01", "to": "2026-03-02", "subject": "x"}, "subject", "unknown_field"),
        ({"from": "2026-03-01", "to": "2026-03-01T00:00:00" + "0" * 100}, "to", "invalid_format"),
    ],
)
def test_a_bad_range_is_a_400(api: Api, body: dict[str, Any], field: str, code: str) -> None:
    response = api.client.post("/v1/erasures", json=body, headers=api.as_(api.key()))
    assert response.status_code == 400
    assert [(d["field"], d["code"]) for d in response.json()["details"]] == [(field, code)]


def test_a_range_that_ends_before_it_starts_erases_nothing(api: Api) -> None:
    key = api.key()
    ingest(api, key, purchases("alice", ALICE_TIMES))
    response = api.client.post("/v1/erasures", json={"from": "2026-03-21", "to": "2026-03-01"}, headers=api.as_(key))
    assert response.json() == {"from": "2026-03-21T00:00:00Z", "to": "2026-03-02T00:00:00Z", "deleted": ZERO}
    assert len(get(api, key, "/v1/events", subject="alice")[1]["data"]) == 3


def test_a_malformed_range_body_is_a_400(api: Api) -> None:
    key = api.key()
    for body in (b"", b"{", b"[]", b'"x"'):
        response = api.client.post("/v1/erasures", content=body, headers=api.as_(key))
        assert response.status_code == 400, body


@pytest.mark.parametrize("role", ["editor", "ingest", "viewer"])
def test_only_admins_erase(api: Api, role: str) -> None:
    key = api.key(role=role)
    for response in (
        api.client.delete("/v1/subjects/alice", headers=api.as_(key)),
        api.client.post("/v1/erasures", json={"from": "2026-01-01", "to": "2026-02-01"}, headers=api.as_(key)),
    ):
        assert (response.status_code, response.json()) == (
            403,
            {"error": f"the {role} role may not admin", "details": []},
        )


def test_an_unknown_or_hostile_subject_gets_a_receipt_of_zeros(api: Api) -> None:
    key = api.key()
    ingest(api, key, purchases("alice", ALICE_TIMES))
    for subject in ("nobody", "%25", "alice%00", "a'--", "%22subject%22", "' OR 1=1 --", "x" * 256):
        response = api.client.delete(f"/v1/subjects/{subject}", headers=api.as_(key))
        assert response.status_code == 200, subject
        assert response.json()["deleted"] == ZERO, subject
    assert len(get(api, key, "/v1/events", subject="alice")[1]["data"]) == 3
    too_long = api.client.delete(f"/v1/subjects/{'x' * 257}", headers=api.as_(key))
    assert (too_long.status_code, too_long.json()["details"]) == (
        400,
        [{"field": "subject_id", "code": "too_long", "message": "a subject is at most 256 characters"}],
    )
    assert api.client.delete("/v1/subjects/alice").status_code == 401


def test_an_offset_erased_from_the_head_of_the_log_is_never_given_out_again(api: Api) -> None:
    key = api.key()

    def send(subject: str) -> str:
        body = {"events": purchases(subject, ALICE_TIMES[:1])}
        response = api.client.post("/v1/events?wait=processed", json=body, headers=api.as_(key))
        assert response.status_code == 200, response.text
        return str(response.json()["results"][0]["id"])

    send("bob")
    send("alice")  # the newest offset
    [erased] = [r["seq"] for r in rows(api.settings, "events") if r["subject"] == "alice"]
    assert erased == max(r["seq"] for r in rows(api.settings, "events"))
    api.client.delete("/v1/subjects/alice", headers=api.as_(key))
    assert max(r["seq"] for r in rows(api.settings, "events")) < erased

    carol = send("carol")

    assert [r["seq"] for r in rows(api.settings, "events") if r["id"] == carol] == [erased + 1]
    # The consumers, whose checkpoints had passed the erased offset, applied it.
    assert [f["event_id"] for f in get(api, key, "/v1/facts", participant="carol")[1]["data"]] == [carol]
