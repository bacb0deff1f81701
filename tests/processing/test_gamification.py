"""Facts and gamification through the HTTP API: definitions and their validation, every metric
and period (with event times and tenant time zones as the clock), streaks and their breaks,
late events, awards as events (for triggers and webhooks), trigger award actions, award
chains that stop, duplicates across dialects, concurrent awards across processes, a batch
applied twice, participants, leaderboards and their ties, the facts list, and 003's /sync."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.processing.awards import MAX_AWARD_DEPTH
from headwater.processing.facts import plan_facts
from tests.conftest import Api, ServerProcess, WorkerThread, run_cli
from tests.processing import settle, settle_with
from tests.processing.replan import replan

PURCHASES = {"name": "three purchases", "fact_type": "custom.purchase", "metric": {"count": True}, "target": 3}


@pytest.fixture
def api(settings: Any) -> Iterator[Api]:
    """The app without the delivery worker: webhook messages stay in the outbox to be looked at."""
    quiet = replace(settings, webhook_worker=False)
    with WorkerThread(quiet), TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield Api(client, quiet)


def day(n: int, hour: int = 10, month: int = 4) -> str:
    return f"2026-{month:02d}-{n:02d}T{hour:02d}:00:00Z"


def post(api: Api, key: str, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = api.client.post(path, json=body, headers=api.as_(key))
    assert response.status_code == status, response.text
    return dict(response.json())


def get(api: Api, key: str, path: str, status: int = 200, **params: Any) -> Any:
    response = api.client.get(path, params=params, headers=api.as_(key))
    assert response.status_code == status, response.text
    return response.json()


def challenge(api: Api, key: str, **definition: Any) -> str:
    return str(post(api, key, "/v1/challenges", {**PURCHASES, **definition})["id"])


def send(api: Api, key: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Ingest and wait until facts and triggers have processed the events."""
    body = {"events": [{"type": "purchase", "subject": "u1", **e} for e in events]}
    response = api.client.post("/v1/events?wait=processed", json=body, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def sync(api: Api, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/api/v1/ingest/events/sync", json=body, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return dict(response.json())


def person(api: Api, key: str, participant: str = "u1", at: str | None = None) -> dict[str, Any]:
    params = {"at": at} if at else {}
    return dict(get(api, key, f"/v1/participants/{participant}", **params))


def progress(api: Api, key: str, at: str, participant: str = "u1") -> list[tuple[Any, ...]]:
    return [(c["progress"], c["completed_at"], c["streak"]) for c in person(api, key, participant, at)["challenges"]]


def events_of(api: Api, key: str, type_: str) -> list[dict[str, Any]]:
    return list(get(api, key, "/v1/events", type=type_, limit=1000)["data"])


# Definitions


def test_badge_crud_validation_and_scope(api: Api) -> None:
    key = api.key()
    gold = {"key": "gold", "name": "Gold", "description": "Top buyer", "image_url": "https://cdn.example.com/g.png"}
    created = post(api, key, "/v1/badges", gold)
    assert created == {**gold, "created_at": created["created_at"], "updated_at": created["created_at"]}
    taken = api.client.post("/v1/badges", json=gold, headers=api.as_(key))
    assert (taken.status_code, taken.json()) == (
        409,
        {
            "error": "a badge with this key exists",
            "details": [{"field": "key", "code": "taken", "message": "a badge with this key exists"}],
        },
    )
    assert get(api, key, "/v1/badges") == {"data": [created]}
    patched = api.client.patch("/v1/badges/gold", json={"name": "Golden", "image_url": None}, headers=api.as_(key))
    assert patched.json() == {
        **created,
        "name": "Golden",
        "image_url": None,
        "updated_at": patched.json()["updated_at"],
    }
    for body, field in (
        ({"key": "has space", "name": "x"}, "key"),
        ({"key": "k"}, "name"),
        ({"key": "k", "name": "n", "colour": "red"}, "colour"),
        ({"key": "k", "name": "n", "image_url": "ftp://x"}, "image_url"),
    ):
        bad = api.client.post("/v1/badges", json=body, headers=api.as_(key))
        assert (bad.status_code, bad.json()["error"], [d["field"] for d in bad.json()["details"]]) == (
            400,
            "invalid badge",
            [field],
        )
    assert api.client.post("/v1/badges", json=gold, headers=api.as_(api.key(role="viewer"))).status_code == 403
    get(api, api.key("other"), "/v1/badges/gold", status=404)
    # A badge a challenge rewards stays until the challenge lets go of it.
    chl = challenge(api, key, reward={"badge": "gold"})
    in_use = api.client.delete("/v1/badges/gold", headers=api.as_(key))
    assert (in_use.status_code, in_use.json()["details"]) == (
        409,
        [{"field": "key", "code": "in_use", "message": f"rewarded by challenge {chl}"}],
    )
    api.client.delete(f"/v1/challenges/{chl}", headers=api.as_(key))
    assert api.client.delete("/v1/badges/gold", headers=api.as_(key)).status_code == 200
    get(api, key, "/v1/badges/gold", status=404)


def test_challenge_crud_and_scope(api: Api) -> None:
    key = api.key()
    post(api, key, "/v1/badges", {"key": "gold", "name": "Gold"})
    definition = {
        **PURCHASES,
        "conditions": {"field": "data.amount", "op": "gte", "value": 10},
        "period": "weekly",
        "starts_at": "2026-04-01T00:00:00+02:00",
        "ends_at": "2026-05-01T00:00:00Z",
        "repeatable": True,
        "reward": {"badge": "gold", "points": 20},
    }
    created = post(api, key, "/v1/challenges", definition)
    chl = created["id"]
    assert chl.startswith("chl_")
    assert created == {
        **definition,
        "id": chl,
        "starts_at": "2026-03-31T22:00:00Z",  # times are kept in UTC
        "ends_at": "2026-05-01T00:00:00Z",
        "created_at": created["created_at"],
        "updated_at": created["updated_at"],
    }
    assert get(api, key, f"/v1/challenges/{chl}") == created
    assert get(api, key, "/v1/challenges") == {"data": [created]}
    patched = api.client.patch(f"/v1/challenges/{chl}", json={"target": 5, "reward": None}, headers=api.as_(key))
    assert (patched.json()["target"], patched.json()["reward"], patched.json()["name"]) == (5, None, PURCHASES["name"])
    get(api, api.key("other"), f"/v1/challenges/{chl}", status=404)
    assert api.client.delete(f"/v1/challenges/{chl}", headers=api.as_(key)).status_code == 200
    get(api, key, f"/v1/challenges/{chl}", status=404)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"metric": {}}, "metric", "exactly one of count, sum, distinct or streak"),
        ({"metric": {"count": True, "sum": "data.x"}}, "metric", "exactly one of count, sum, distinct or streak"),
        ({"metric": {"count": False}}, "metric.count", "must be true"),
        ({"metric": {"sum": "amount"}}, "metric.sum", None),
        ({"metric": {"distinct": "data..sku"}}, "metric.distinct", None),
        ({"metric": {"streak": "hourly"}}, "metric.streak", None),
        (
            {"metric": {"streak": "daily"}, "period": "daily"},
            "period",
            "a streak counts consecutive periods itself: use all_time",
        ),
        ({"period": "yearly"}, "period", None),
        ({"period": "rolling:0d"}, "period", None),
        ({"period": "rolling:400d"}, "period", None),
        ({"target": 2.5}, "target", "a whole number for count"),
        ({"target": 0}, "target", None),
        ({"ends_at": "2026-04-31T00:00:00Z"}, "ends_at", None),
        ({"reward": {}}, "reward", "a badge, points or both"),
        ({"reward": {"points": 0}}, "reward.points", None),
        ({"reward": {"points": None}}, "reward.points", None),
        ({"fact_type": "purchase"}, "fact_type", None),
        ({"conditions": {"field": "data.x", "op": "between", "value": 1}}, "conditions.op", None),
        ({"colour": "red"}, "colour", None),
    ],
)
def test_invalid_challenges_are_400_with_the_reason(
    api: Api, change: dict[str, Any], field: str, message: str | None
) -> None:
    key = api.key()
    response = api.client.post("/v1/challenges", json={**PURCHASES, **change}, headers=api.as_(key))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid challenge"
    assert [d["field"] for d in body["details"]] == [field]
    if message is not None:
        assert body["details"][0]["message"] == message
    assert get(api, key, "/v1/challenges") == {"data": []}


def test_a_reward_badge_must_exist(api: Api) -> None:
    key = api.key()
    response = api.client.post("/v1/challenges", json={**PURCHASES, "reward": {"badge": "nope"}}, headers=api.as_(key))
    assert (response.status_code, response.json()) == (
        409,
        {
            "error": "no badge 'nope': create it first",
            "details": [{"field": "reward.badge", "code": "not_found", "message": "no badge 'nope': create it first"}],
        },
    )
    assert get(api, key, "/v1/challenges") == {"data": []}


def test_settings(api: Api) -> None:
    key = api.key()
    assert get(api, key, "/v1/settings") == {"timezone": "UTC", "levels": []}
    body = {"timezone": "Europe/Berlin", "levels": [0, 100, 500]}
    assert api.client.put("/v1/settings", json=body, headers=api.as_(key)).json() == body
    assert get(api, key, "/v1/settings") == body
    assert get(api, key, "/v1/settings", status=200) != get(api, api.key("other"), "/v1/settings")
    shuffled = api.client.put("/v1/settings", json={"levels": [100, 0, 100]}, headers=api.as_(key))
    assert shuffled.json() == {"timezone": "UTC", "levels": [0, 100]}  # thresholds, in order, once each
    for bad, field in (
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"levels": [-1]}, "levels"),
        ({"levels": 5}, "levels"),
    ):
        response = api.client.put("/v1/settings", json=bad, headers=api.as_(key))
        assert (response.status_code, [d["field"] for d in response.json()["details"]]) == (400, [field])
    assert api.client.put("/v1/settings", json=body, headers=api.as_(api.key(role="viewer"))).status_code == 403


# Metrics and periods


def test_count_all_time_completes_once_and_rewards_once(api: Api) -> None:
    key = api.key()
    post(api, key, "/v1/badges", {"key": "starter", "name": "Starter"})
    chl = challenge(api, key, reward={"badge": "starter", "points": 50})
    send(api, key, *({"time": day(n)} for n in (10, 11, 12, 13)))
    settle(api, key)
    assert person(api, key) == {
        "participant_id": "u1",
        "points": 50,
        "level": None,
        "badges": [{"badge": "starter", "awarded_at": day(12), "reason": f"challenge:{chl}"}],
        "challenges": [{"challenge_id": chl, "progress": 4, "target": 3, "completed_at": day(12), "streak": None}],
    }
    assert len(events_of(api, key, "challenge.completed")) == 1
    assert len(events_of(api, key, "badge.awarded")) == 1
    assert len(events_of(api, key, "points.awarded")) == 1


def test_daily_sum_in_the_tenant_time_zone(api: Api) -> None:
    key = api.key()
    api.client.put("/v1/settings", json={"timezone": "America/New_York"}, headers=api.as_(key))
    chl = challenge(
        api, key, metric={"sum": "data.amount"}, target=100, period="daily", repeatable=True, reward={"points": 10}
    )
    # 19:30 and 23:00 on April 10 in New York, then 01:00 on April 11.
    send(api, key, {"time": "2026-04-10T23:30:00Z", "data": {"amount": 60}})
    second = sync(
        api,
        key,
        {
            "event_name": "purchase",
            "participant_id": "u1",
            "properties": {"amount": 50},
            "timestamp": "2026-04-11T03:00:00Z",
        },
    )
    assert second["progress"] == [
        {"challenge_id": chl, "period": "2026-04-10", "before": 60, "after": 110, "target": 100, "completed": True}
    ]
    send(api, key, {"time": "2026-04-11T05:00:00Z", "data": {"amount": 70}}, {"time": day(11), "data": {"amount": "x"}})
    settle(api, key)
    assert progress(api, key, at="2026-04-10T12:00:00-04:00") == [(110, "2026-04-11T03:00:00Z", 1)]
    assert progress(api, key, at="2026-04-11T12:00:00-04:00") == [(70, "2026-04-11T03:00:00Z", 1)]
    assert progress(api, key, at="2026-04-13T12:00:00-04:00") == [(0, "2026-04-11T03:00:00Z", 0)]
    assert person(api, key)["points"] == 10


def test_weekly_distinct_values(api: Api) -> None:
    key = api.key()
    chl = challenge(api, key, metric={"distinct": "data.sku"}, target=3, period="weekly")
    send(
        api,
        key,
        {"time": day(12), "data": {"sku": "A"}},  # Sunday: ISO week 15
        {"time": day(13), "data": {"sku": "A"}},  # Monday: week 16
        {"time": day(13, 11), "data": {"sku": "A"}},
        {"time": day(14), "data": {"sku": "B"}},
        {"time": day(14, 11), "data": {"sku": {"nested": [1, 2]}}},
        {"time": day(14, 12)},  # no sku: does not count
    )
    assert progress(api, key, at=day(12)) == [(1, day(14, 11), 0)]  # completed weeks in a row: none yet
    assert progress(api, key, at=day(14)) == [(3, day(14, 11), 1)]
    assert get(api, key, f"/v1/challenges/{chl}/leaderboard", at=day(14))["bucket"] == "2026-W16"


def test_monthly_repeatable_count_completes_once_per_month(api: Api) -> None:
    key = api.key()
    challenge(api, key, target=2, period="monthly", repeatable=True, reward={"points": 5})
    send(api, key, *({"time": t} for t in (day(1), day(20), day(25), day(3, month=5), day(4, month=5))))
    settle(api, key)
    completions = events_of(api, key, "challenge.completed")
    assert sorted(e["data"]["occurrence"] for e in completions) == ["2026-04", "2026-05"]
    assert person(api, key, at=day(10, month=5))["points"] == 10
    assert progress(api, key, at=day(10, month=5)) == [(2, day(4, month=5), 2)]
    assert progress(api, key, at=day(10, month=7)) == [(0, day(4, month=5), 0)]


def test_rolling_window_counts_a_late_event_in_its_own_window(api: Api) -> None:
    key = api.key()
    chl = challenge(api, key, target=2, period="rolling:7d", reward={"points": 5})
    send(api, key, {"time": day(1)}, {"time": day(9)})  # 8 days apart: no 7-day window holds both
    assert events_of(api, key, "challenge.completed") == []
    late = sync(api, key, {"event_name": "purchase", "participant_id": "u1", "timestamp": day(5)})
    assert (late["progress"], late["awards"]) == (
        [{"challenge_id": chl, "period": "2026-04-05", "before": 1, "after": 2, "target": 2, "completed": True}],
        [
            {"type": "challenge.completed", "challenge_id": chl, "occurrence": "once"},
            {"type": "points.awarded", "points": 5, "reason": f"challenge:{chl}"},
        ],
    )
    assert progress(api, key, at=day(9)) == [(2, day(5), None)]  # April 3-9: the 5th and the 9th
    assert progress(api, key, at=day(20)) == [(0, day(5), None)]


def test_daily_streak_breaks_and_a_late_event_mends_it(api: Api) -> None:
    key = api.key()
    post(api, key, "/v1/badges", {"key": "streaker", "name": "Streaker"})
    chl = challenge(api, key, metric={"streak": "daily"}, target=3, reward={"badge": "streaker"})
    send(api, key, {"time": day(1)}, {"time": day(2)}, {"time": day(4)})
    assert progress(api, key, at=day(2)) == [(2, None, 2)]
    assert progress(api, key, at=day(4)) == [(1, None, 1)]  # the 3rd had none: broken
    assert progress(api, key, at=day(5, 23)) == [(1, None, 1)]  # the 5th is not over yet
    assert progress(api, key, at=day(6)) == [(0, None, 0)]
    mended = sync(api, key, {"event_name": "purchase", "participant_id": "u1", "timestamp": day(3)})
    assert mended["progress"] == [
        {"challenge_id": chl, "period": "2026-04-03", "before": 2, "after": 4, "target": 3, "completed": True}
    ]
    again = sync(api, key, {"event_name": "purchase", "participant_id": "u1", "timestamp": day(3, 18)})
    assert (again["progress"], again["awards"]) == ([], [])  # the day had a fact already
    assert progress(api, key, at=day(4)) == [(4, day(3), 4)]
    settle(api, key)
    assert [b["badge"] for b in person(api, key)["badges"]] == ["streaker"]


def test_weekly_streak_in_the_tenant_time_zone(api: Api) -> None:
    key = api.key()
    api.client.put("/v1/settings", json={"timezone": "Asia/Tokyo"}, headers=api.as_(key))
    challenge(api, key, metric={"streak": "weekly"}, target=2)
    # Sunday 20:00 UTC is Monday 05:00 in Tokyo: week 16, not 15.
    send(api, key, {"time": "2026-04-12T20:00:00Z"}, {"time": "2026-04-20T01:00:00Z"})
    assert progress(api, key, at="2026-04-21")[0][0] == 2
    assert [e["data"]["occurrence"] for e in events_of(api, key, "challenge.completed")] == ["once"]


def test_conditions_and_time_bounds(api: Api) -> None:
    key = api.key()
    challenge(
        api,
        key,
        target=2,
        conditions={"field": "data.amount", "op": "gte", "value": 100},
        starts_at="2026-04-05T00:00:00Z",
        ends_at="2026-04-10T00:00:00Z",
    )
    send(
        api,
        key,
        {"time": day(4), "data": {"amount": 150}},  # before starts_at
        {"time": day(6), "data": {"amount": 50}},  # conditions fail
        {"time": day(7), "data": {"amount": 200}},
        {"time": "2026-04-10T00:00:00Z", "data": {"amount": 100}},  # ends_at is exclusive
        {"time": day(8), "data": {"amount": 120}},
    )
    assert progress(api, key, at=day(9)) == [(2, day(8), None)]


def test_repeatable_all_time_completes_at_every_multiple(api: Api) -> None:
    key = api.key()
    challenge(api, key, metric={"sum": "data.amount"}, target=100, repeatable=True, reward={"points": 1})
    send(api, key, {"data": {"amount": 250}}, {"data": {"amount": 60.5}})
    settle(api, key)
    assert sorted(e["data"]["occurrence"] for e in events_of(api, key, "challenge.completed")) == ["1", "2", "3"]
    assert person(api, key)["points"] == 3
    assert person(api, key)["challenges"][0]["progress"] == 310.5


# Awards


def test_awards_are_events_that_triggers_and_webhooks_see(api: Api) -> None:
    key = api.key()
    post(api, key, "/v1/badges", {"key": "first", "name": "First purchase"})
    chl = challenge(api, key, target=1, reward={"badge": "first", "points": 10})
    topics = ["event.challenge.completed", "event.badge.awarded", "event.points.awarded"]
    post(api, key, "/v1/webhooks", {"url": "https://hooks.example.com/in", "subscriptions": topics})
    vip = {
        "name": "vip",
        "event_types": ["badge.awarded"],
        "action": {"type": "journey_enroll", "config": {"journeyId": "vip"}},
    }
    post(api, key, "/v1/triggers", vip)
    [result] = send(api, key, {"time": day(10), "idempotency_key": "order-1"})
    settle(api, key)
    [completed] = events_of(api, key, "challenge.completed")
    assert completed == {
        "id": completed["id"],
        "type": "challenge.completed",
        "subject": "u1",
        "source": "headwater",
        "channel": None,
        "time": day(10),
        "received_at": completed["received_at"],
        "idempotency_key": completed["idempotency_key"],
        "data": {
            "challenge_id": chl,
            "challenge_name": "three purchases",
            "occurrence": "once",
            "progress": 1,
            "target": 1,
            "cause_event_id": result["id"],
            "depth": 1,
        },
        "tenant": "acme",
        "mode": "live",
        "seq": completed["seq"],
    }
    [badge] = events_of(api, key, "badge.awarded")
    assert badge["data"] == {"badge": "first", "reason": f"challenge:{chl}", "cause_event_id": result["id"], "depth": 1}
    deliveries = get(api, key, "/v1/deliveries")["data"]
    assert sorted(d["topic"] for d in deliveries) == sorted(topics)
    enrolled = get(api, key, "/v1/journeys/vip/enrollments")["data"]
    assert [(e["subject"], e["status"]) for e in enrolled] == [("u1", "active")]
    # Award events are facts of their own types.
    facts = get(api, key, "/v1/facts", participant="u1")["data"]
    assert sorted(f["fact_type"] for f in facts) == [
        "badge.awarded",
        "challenge.completed",
        "custom.purchase",
        "points.awarded",
    ]


def test_trigger_award_actions(api: Api) -> None:
    key = api.key()
    post(api, key, "/v1/badges", {"key": "fan", "name": "Fan"})
    rule = {"name": "fan badge", "event_types": ["like"], "action": {"type": "award_badge", "config": {"badge": "fan"}}}
    fan = post(api, key, "/v1/triggers", rule)["id"]
    points = {"type": "award_points", "config": {"points": 3, "reason": "likes"}}
    post(api, key, "/v1/triggers", {"name": "like points", "event_types": ["like"], "action": points})
    results = send(api, key, {"type": "like", "time": day(1)}, {"type": "like", "time": day(2)})
    outcomes = [[(a["type"], a["status"], a["result"]) for a in r["actions"]] for r in results]
    assert outcomes == [
        [
            ("award_badge", "dispatched", {"badge": "fan", "awarded": True}),
            ("award_points", "dispatched", {"points": 3, "awarded": True}),
        ],
        [
            ("award_badge", "skipped", {"badge": "fan", "awarded": False}),
            ("award_points", "dispatched", {"points": 3, "awarded": True}),
        ],
    ]
    assert person(api, key)["points"] == 6
    assert person(api, key)["badges"] == [{"badge": "fan", "awarded_at": day(1), "reason": f"trigger:{fan}"}]
    missing = {
        "name": "missing",
        "event_types": ["poke"],
        "action": {"type": "award_badge", "config": {"badge": "nope"}},
    }
    post(api, key, "/v1/triggers", missing)
    [poke, anonymous] = send(api, key, {"type": "poke"}, {"type": "like", "subject": None})
    assert [(a["status"], a["error"]) for a in poke["actions"]] == [("failed", "no badge 'nope'")]
    assert [(a["status"], a["error"]) for a in anonymous["actions"]] == [
        ("failed", "the event has no subject to award")
    ] * 2
    bad = api.client.post(
        "/v1/triggers", json={**rule, "action": {"type": "award_points", "config": {"points": 0}}}, headers=api.as_(key)
    )
    assert [d["field"] for d in bad.json()["details"]] == ["action.config.points"]


def test_award_chains_stop(api: Api) -> None:
    """A challenge on points.awarded that rewards points would feed itself forever."""
    key = api.key()
    seed = {"name": "seed", "event_types": ["tick"], "action": {"type": "award_points", "config": {"points": 1}}}
    post(api, key, "/v1/triggers", seed)
    challenge(api, key, fact_type="points.awarded", target=1, repeatable=True, reward={"points": 1})
    send(api, key, {"type": "tick"})
    settle(api, key)
    settle(api, key)
    awarded = events_of(api, key, "points.awarded")
    assert sorted(e["data"]["depth"] for e in awarded) == list(range(1, MAX_AWARD_DEPTH + 1))
    assert person(api, key)["points"] == MAX_AWARD_DEPTH


# Exactly once


def test_duplicates_across_dialects_count_once(api: Api) -> None:
    key = api.key()
    chl = challenge(api, key, target=2)
    [native] = send(api, key, {"time": day(10), "idempotency_key": "order-1"})
    answer = sync(api, key, {"event_name": "purchase", "participant_id": "u1", "idempotency_key": "order-1"})
    assert (answer["event_id"], answer["fact_id"]) == (native["id"], "fact_" + native["id"][4:])
    assert answer["progress"] == [
        {"challenge_id": chl, "period": "all_time", "before": 0, "after": 1, "target": 2, "completed": False}
    ]
    batch = {"events": [{"event_name": "purchase", "participant_id": "u1", "idempotency_key": "order-1"}]}
    assert api.client.post("/api/v1/ingest/events/batch", json=batch, headers={"X-API-Key": key}).status_code == 202
    settle(api, key)
    assert progress(api, key, at=day(10)) == [(1, None, None)]
    assert len(get(api, key, "/v1/facts", participant="u1")["data"]) == 1


def test_a_batch_applied_twice_counts_once(api: Api) -> None:
    key = api.key()
    challenge(api, key, target=2, reward={"points": 5})
    send(api, key, {"time": day(1)}, {"time": day(2)})
    settle(api, key)
    before = person(api, key)

    again = replan(api.settings, plan_facts)
    assert (again.progress, again.completions, again.points, again.appended) == ([], [], [], [])
    settle(api, key)
    assert person(api, key) == before == {**before, "points": 5}
    assert len(events_of(api, key, "points.awarded")) == 1


def test_concurrent_events_in_two_processes_award_one_badge(server_factory: type[ServerProcess], tmp_path: Any) -> None:
    data_dir = tmp_path / "data"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir)).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    servers = [server_factory(data_dir), server_factory(data_dir)]
    for server in servers:
        server.start()
    one = servers[0].url
    assert httpx.post(one + "/v1/badges", json={"key": "gold", "name": "Gold"}, headers=headers).status_code == 201
    rule = {"name": "gold", "event_types": ["buy"], "action": {"type": "award_badge", "config": {"badge": "gold"}}}
    assert httpx.post(one + "/v1/triggers", json=rule, headers=headers).status_code == 201
    chl = {
        "name": "first",
        "fact_type": "custom.buy",
        "metric": {"count": True},
        "target": 1,
        "reward": {"badge": "gold"},
    }
    assert httpx.post(one + "/v1/challenges", json=chl, headers=headers).status_code == 201
    errors: list[str] = []

    def post_events(n: int) -> None:
        url = servers[n % 2].url + "/v1/events"
        with httpx.Client(headers=headers, timeout=30) as client:
            for i in range(10):
                response = client.post(url, json={"type": "buy", "subject": "p1", "idempotency_key": f"{n}-{i}"})
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=post_events, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for server in servers:
        url = server.url + "/v1/events?wait=processed"
        settle_with(lambda body, url=url: httpx.post(url, json=body, headers=headers, timeout=90), "t", Settings())
    participant = httpx.get(one + "/v1/participants/p1", headers=headers).json()
    assert [b["badge"] for b in participant["badges"]] == ["gold"]
    awarded = httpx.get(one + "/v1/events", params={"type": "badge.awarded"}, headers=headers).json()["data"]
    assert len(awarded) == 1
    completed = httpx.get(one + "/v1/events", params={"type": "challenge.completed"}, headers=headers).json()["data"]
    assert len(completed) == 1
    facts = httpx.get(one + "/v1/facts", params={"fact_type": "custom.buy", "limit": 1000}, headers=headers).json()
    assert len(facts["data"]) == 80
    for server in servers:
        server.stop()


# Reads


def test_participant_with_levels_and_unknown_participants(api: Api) -> None:
    key = api.key()
    api.client.put("/v1/settings", json={"levels": [0, 50, 100]}, headers=api.as_(key))
    challenge(api, key, target=1, reward={"points": 60})
    send(api, key, {"time": day(1)})
    assert (person(api, key)["points"], person(api, key)["level"]) == (60, 2)
    get(api, key, "/v1/participants/nobody", status=404)
    get(api, api.key("other"), "/v1/participants/u1", status=404)
    get(api, api.key(mode="test"), "/v1/participants/u1", status=404)
    send(api, key, {"type": "page_view", "subject": "u2"})  # a fact, nothing else
    assert person(api, key, "u2") == {"participant_id": "u2", "points": 0, "level": 1, "badges": [], "challenges": []}


def test_points_leaderboard_order_and_ties(api: Api) -> None:
    """Most points first; equal points: whoever reached them first (event time), then by id."""
    key = api.key()
    api.client.put("/v1/settings", json={"levels": [0, 15]}, headers=api.as_(key))
    rule = {"name": "score", "event_types": ["score"], "action": {"type": "award_points", "config": {"points": 10}}}
    post(api, key, "/v1/triggers", rule)
    send(
        api,
        key,
        {"type": "score", "subject": "a", "time": day(10, 10)},
        {"type": "score", "subject": "b", "time": day(10, 9)},
        {"type": "score", "subject": "d", "time": day(10, 11)},
        {"type": "score", "subject": "c", "time": day(10, 11)},
        {"type": "score", "subject": "e", "time": day(10, 8)},
        {"type": "score", "subject": "e", "time": day(10, 12)},
    )

    def entry(rank: int, who: str, points: int, hour: int) -> dict[str, Any]:
        return {
            "rank": rank,
            "participant_id": who,
            "points": points,
            "level": 2 if points >= 15 else 1,
            "reached_at": day(10, hour),
        }

    expected = [
        entry(1, "e", 20, 12),
        entry(2, "b", 10, 9),
        entry(3, "a", 10, 10),
        entry(4, "c", 10, 11),
        entry(5, "d", 10, 11),
    ]
    assert get(api, key, "/v1/leaderboards/points") == {"period": "all_time", "bucket": "all_time", "data": expected}
    assert get(api, key, "/v1/leaderboards/points", limit=2)["data"] == expected[:2]
    assert get(api, key, "/v1/leaderboards/points", period="weekly", at=day(11)) == {
        "period": "weekly",
        "bucket": "2026-W15",
        "data": expected,
    }
    assert get(api, key, "/v1/leaderboards/points", period="daily", at=day(11)) == {
        "period": "daily",
        "bucket": "2026-04-11",
        "data": [],
    }
    get(api, key, "/v1/leaderboards/points", status=400, period="yearly")


def test_challenge_leaderboard_order_and_ties(api: Api) -> None:
    key = api.key()
    chl = challenge(api, key, target=3, period="daily")
    streak = challenge(api, key, metric={"streak": "daily"}, target=5)
    send(
        api,
        key,
        {"subject": "x", "time": day(10, 8)},
        {"subject": "x", "time": day(10, 12)},
        {"subject": "y", "time": day(10, 9)},
        {"subject": "y", "time": day(10, 10)},
        {"subject": "z", "time": day(10, 7)},
        {"subject": "w", "time": day(11, 7)},
    )
    board = get(api, key, f"/v1/challenges/{chl}/leaderboard", at=day(10))
    assert board == {
        "challenge_id": chl,
        "period": "daily",
        "bucket": "2026-04-10",
        "target": 3,
        "data": [
            {"rank": 1, "participant_id": "y", "progress": 2, "reached_at": day(10, 10)},
            {"rank": 2, "participant_id": "x", "progress": 2, "reached_at": day(10, 12)},
            {"rank": 3, "participant_id": "z", "progress": 1, "reached_at": day(10, 7)},
        ],
    }
    send(api, key, {"subject": "x", "time": day(11)}, {"subject": "z", "time": day(9)})
    # Streaks still running on the 11th (through the 10th or the 11th); equal ones: whoever
    # completed theirs first (the latest first fact of its days), then by id.
    rows = get(api, key, f"/v1/challenges/{streak}/leaderboard", at=day(11))["data"]
    assert [(r["participant_id"], r["progress"], r["reached_at"]) for r in rows] == [
        ("z", 2, day(10, 7)),
        ("x", 2, day(11)),
        ("y", 1, day(10, 9)),
        ("w", 1, day(11, 7)),
    ]


def test_facts_list_filters_and_pages(api: Api) -> None:
    key = api.key()
    [first, second, view] = send(
        api,
        key,
        {"time": day(1), "data": {"amount": 5}},
        {"time": day(3)},
        {"type": "view", "time": day(2)},
    )
    send(api, key, {"subject": "u2", "time": day(2)})
    facts = get(api, key, "/v1/facts", participant="u1")["data"]
    assert [f["event_id"] for f in facts] == [second["id"], view["id"], first["id"]]  # newest first
    assert facts[-1] == {
        "fact_id": "fact_" + first["id"][4:],
        "fact_type": "custom.purchase",
        "participant_id": "u1",
        "event_id": first["id"],
        "data": {"amount": 5},
        "occurred_at": day(1),
        "processed_at": facts[-1]["processed_at"],
    }
    purchases = get(api, key, "/v1/facts", fact_type="custom.purchase")["data"]
    assert len(purchases) == 3
    ranged = get(api, key, "/v1/facts", participant="u1", **{"from": "2026-04-02", "to": "2026-04-02"})["data"]
    assert [f["event_id"] for f in ranged] == [view["id"]]
    page = get(api, key, "/v1/facts", participant="u1", limit=2)
    rest = get(api, key, "/v1/facts", participant="u1", limit=2, cursor=page["next_cursor"])
    assert [f["event_id"] for f in page["data"] + rest["data"]] == [second["id"], view["id"], first["id"]]
    assert rest["next_cursor"] is None
    get(api, key, "/v1/facts", status=400, cursor="nope")
    assert get(api, api.key("other"), "/v1/facts")["data"] == []


def test_sync_answers_with_the_fact_its_progress_and_awards(api: Api) -> None:
    key = api.key()
    post(api, key, "/v1/badges", {"key": "lvl", "name": "Leveller"})
    levels = challenge(api, key, fact_type="custom.level_completed", target=1, reward={"badge": "lvl", "points": 25})
    score = challenge(api, key, fact_type="custom.level_completed", metric={"sum": "data.score"}, target=10_000)
    body = {
        "event_name": "level_completed",
        "participant_id": "user_123",
        "properties": {"level": 5, "score": 9200, "time_seconds": 120},
        "idempotency_key": "run-7",
    }
    answer = sync(api, key, body)
    [event] = events_of(api, key, "level_completed")
    assert answer == {
        "event_id": event["id"],
        "fact_id": "fact_" + event["id"][4:],
        "fact_type": "custom.level_completed",
        "processed_at": event["received_at"],
        "progress": [
            {"challenge_id": levels, "period": "all_time", "before": 0, "after": 1, "target": 1, "completed": True},
            {
                "challenge_id": score,
                "period": "all_time",
                "before": 0,
                "after": 9200,
                "target": 10000,
                "completed": False,
            },
        ],
        "awards": [
            {"type": "challenge.completed", "challenge_id": levels, "occurrence": "once"},
            {"type": "badge.awarded", "badge": "lvl", "reason": f"challenge:{levels}"},
            {"type": "points.awarded", "points": 25, "reason": f"challenge:{levels}"},
        ],
    }
    assert sync(api, key, body) == answer  # a re-sent key: the original's fact and effects
    assert person(api, key, "user_123")["points"] == 25
