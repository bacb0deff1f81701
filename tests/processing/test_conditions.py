"""Condition semantics: every operator, absent fields, type strictness, and refusals with paths."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from headwater.events import Event
from headwater.processing.conditions import ConditionError, EventView, compile_conditions, explain


def view(data: dict[str, Any] | None = None, **fields: Any) -> EventView:
    when = datetime(2026, 4, 12, 10, 30, tzinfo=UTC)
    event = Event(
        id="evt_x",
        type=fields.get("type", "purchase"),
        subject=fields.get("subject", "cust_1"),
        source=fields.get("source"),
        channel=fields.get("channel", "pos"),
        time=when,
        received_at=when,
        idempotency_key=None,
        data=msgspec.Raw(msgspec.json.encode(data or {})),
        tenant="t",
        mode="live",
    )
    return EventView(event)


DATA = {
    "amount": 150,
    "price": 9.5,
    "vip": True,
    "tags": ["new", "gold"],
    "sku": "SKU-42",
    "nested": {"deep": {"x": "y"}},
    "items": [{"sku": "A"}, {"sku": "B"}],
    "zero": 0,
    "none": None,
}

CASES: list[tuple[dict[str, Any], bool]] = [
    ({"field": "data.amount", "op": "eq", "value": 150}, True),
    ({"field": "data.amount", "op": "eq", "value": 150.0}, True),
    ({"field": "data.vip", "op": "eq", "value": 1}, False),
    ({"field": "data.zero", "op": "eq", "value": False}, False),
    ({"field": "data.amount", "op": "eq", "value": "150"}, False),
    ({"field": "data.none", "op": "eq", "value": None}, True),
    ({"field": "data.amount", "op": "neq", "value": 1}, True),
    ({"field": "data.missing", "op": "neq", "value": 1}, True),
    ({"field": "data.amount", "op": "gt", "value": 100}, True),
    ({"field": "data.amount", "op": "gt", "value": 150}, False),
    ({"field": "data.amount", "op": "gte", "value": 150}, True),
    ({"field": "data.price", "op": "lt", "value": 10}, True),
    ({"field": "data.price", "op": "lte", "value": 9.5}, True),
    ({"field": "data.sku", "op": "gt", "value": 100}, False),
    ({"field": "data.vip", "op": "gt", "value": 0}, False),
    ({"field": "data.missing", "op": "lt", "value": 100}, False),
    ({"field": "time", "op": "gte", "value": "2026-04-12T00:00:00Z"}, True),
    ({"field": "channel", "op": "in", "value": ["pos", "web"]}, True),
    ({"field": "channel", "op": "in", "value": ["web"]}, False),
    ({"field": "data.vip", "op": "in", "value": [1]}, False),
    ({"field": "data.vip", "op": "in", "value": [True]}, True),
    ({"field": "channel", "op": "nin", "value": ["web"]}, True),
    ({"field": "source", "op": "nin", "value": ["web"]}, True),
    ({"field": "data.vip", "op": "exists"}, True),
    ({"field": "data.none", "op": "exists"}, True),
    ({"field": "data.nope", "op": "exists"}, False),
    ({"field": "source", "op": "exists"}, False),
    ({"field": "source", "op": "exists", "value": False}, True),
    ({"field": "data.tags", "op": "contains", "value": "gold"}, True),
    ({"field": "data.sku", "op": "contains", "value": "-4"}, True),
    ({"field": "data.tags", "op": "contains", "value": "old"}, False),
    ({"field": "data.sku", "op": "starts_with", "value": "SKU-"}, True),
    ({"field": "data.amount", "op": "starts_with", "value": "1"}, False),
    ({"field": "data.sku", "op": "matches", "value": "^SKU-[0-9]+$"}, True),
    ({"field": "data.sku", "op": "matches", "value": "^sku"}, False),
    ({"field": "data.nested.deep.x", "op": "eq", "value": "y"}, True),
    ({"field": "data.items.1.sku", "op": "eq", "value": "B"}, True),
    ({"field": "data.items.5.sku", "op": "exists"}, False),
    ({"field": "data.sku.inner", "op": "exists"}, False),
    ({"field": "type", "op": "eq", "value": "purchase"}, True),
    ({"field": "subject", "op": "starts_with", "value": "cust_"}, True),
]


@pytest.mark.parametrize(("condition", "expected"), CASES)
def test_operator(condition: dict[str, Any], expected: bool) -> None:
    assert compile_conditions(condition)(view(DATA)) is expected


def test_all_any_not_and_the_issue_example() -> None:
    tree = {
        "all": [
            {"field": "data.amount", "op": "gt", "value": 100},
            {"any": [{"field": "channel", "op": "in", "value": ["pos", "web"]}, {"field": "data.vip", "op": "exists"}]},
        ]
    }
    match = compile_conditions(tree)
    assert match(view({"amount": 101}, channel="pos"))
    assert match(view({"amount": 101, "vip": False}, channel="app"))
    assert not match(view({"amount": 101}, channel="app"))
    assert not match(view({"amount": 100}, channel="pos"))
    assert compile_conditions({"not": tree})(view({"amount": 100}))
    assert compile_conditions(None)(view())


def test_explain_names_the_failing_leaves() -> None:
    tree = {
        "all": [
            {"field": "data.amount", "op": "gt", "value": 100},
            {"any": [{"field": "channel", "op": "eq", "value": "web"}, {"field": "data.vip", "op": "exists"}]},
        ]
    }
    assert explain(tree, view({"amount": 150, "vip": 1})) == []
    assert explain(tree, view({"amount": 50}, channel="pos")) == [
        "conditions.all.0: data.amount gt 100 is false (value: 50)",
        "conditions.all.1.any: none of the alternatives matched",
        'conditions.all.1.any.0: channel eq "web" is false (value: "pos")',
        "conditions.all.1.any.1: data.vip exists is false (value: absent)",
    ]


BAD: list[tuple[Any, str]] = [
    ([], "conditions"),
    ({"all": []}, "conditions.all"),
    ({"all": [{"field": "data.x", "op": "eq", "value": 1}], "any": []}, "conditions"),
    ({"all": [{"field": "data.x", "op": "between", "value": 1}]}, "conditions.all.0.op"),
    ({"any": [{"op": "eq", "value": 1}]}, "conditions.any.0.field"),
    ({"field": "data.x", "op": "eq"}, "conditions.value"),
    ({"field": "amount", "op": "eq", "value": 1}, "conditions.field"),
    ({"field": "data..x", "op": "eq", "value": 1}, "conditions.field"),
    ({"field": "data.x", "op": "in", "value": "pos"}, "conditions.value"),
    ({"field": "data.x", "op": "in", "value": [[1]]}, "conditions.value"),
    ({"field": "data.x", "op": "gt", "value": True}, "conditions.value"),
    ({"field": "data.x", "op": "eq", "value": {"a": 1}}, "conditions.value"),
    ({"field": "data.x", "op": "matches", "value": "(?=look)"}, "conditions.value"),
    ({"field": "data.x", "op": "matches", "value": "a" * 600}, "conditions.value"),
    ({"field": "data.x", "op": "eq", "value": 1, "extra": 2}, "conditions.extra"),
    ({"not": {"field": "data.x", "op": "exists", "value": "yes"}}, "conditions.not.value"),
]


@pytest.mark.parametrize(("tree", "path"), BAD)
def test_invalid_trees_name_the_bad_node(tree: Any, path: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_conditions(tree)
    assert caught.value.path == path


def test_depth_and_size_are_bounded() -> None:
    deep: Any = {"field": "data.x", "op": "exists"}
    for _ in range(20):
        deep = {"not": deep}
    with pytest.raises(ConditionError, match="nest at most"):
        compile_conditions(deep)
    wide = {"any": [{"field": "data.x", "op": "eq", "value": i} for i in range(300)]}
    with pytest.raises(ConditionError, match="at most 256 nodes"):
        compile_conditions(wide)


@pytest.mark.timeout(10)
def test_matches_cannot_backtrack() -> None:
    # Catastrophic for a backtracking engine (this would run for ages, hitting the timeout);
    # linear for the one `matches` uses.
    match = compile_conditions({"field": "data.s", "op": "matches", "value": "^(a+)+$"})
    assert not match(view({"s": "a" * 50_000 + "b"}))
    assert match(view({"s": "a" * 50_000}))
