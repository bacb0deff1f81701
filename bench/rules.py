"""Trigger evaluation cost: 1,000 active rules over 100 event types.

Two figures, both per event:
- evaluation: finding the rules for the event's type (mapped types included) and running
  their compiled conditions — what the target (<= 20 µs) is about;
- applied: the same events planned by the trigger engine (`plan_triggers`: bulk reads of the
  windows and cooldowns, then the plan in Python) and written by a real SQLite store (the
  window, cooldown and action rows of the rules that fire, one transaction per partition's
  share of a batch), as a worker's consumers do.

The ceiling printed beside them is the cost of decoding each event's `data` once, which any
evaluation that looks into the payload must pay.

    .venv/bin/python bench/rules.py [--events 20000] [--rules 1000] [--types 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headwater.events import Event
from headwater.partitions import partition_of
from headwater.processing.conditions import EventView
from headwater.processing.definitions import Definitions
from headwater.processing.rules import DEFAULT_TYPE_MAPPINGS, TriggerIn, TriggerSet, compile_trigger
from headwater.processing.triggers import plan_triggers
from headwater.storage.effects import EffectBatch
from headwater.storage.registry import TriggerRecord
from headwater.storage.sqlite import open_sqlite_store, partition_file

TARGET_US = 20.0


def make_rules(count: int, types: int, rng: random.Random) -> list[TriggerIn]:
    rules = []
    for i in range(count):
        threshold = rng.choice([10, 50, 100, 500])
        conditions = {
            "all": [
                {"field": "data.amount", "op": "gt", "value": threshold},
                {
                    "any": [
                        {"field": "channel", "op": "in", "value": ["pos", "web"]},
                        {"field": "data.vip", "op": "exists"},
                        {"field": "data.sku", "op": "starts_with", "value": f"SKU-{i % 10}"},
                    ]
                },
            ]
        }
        rule = {
            "name": f"rule {i}",
            "event_types": [f"type_{i % types}"],
            "conditions": conditions,
            "priority": rng.randint(0, 100),
            "action": {"type": "recommend", "config": {"decisionFlowId": f"df_{i}"}},
        }
        if i % 5 == 0:
            rule["window"] = {"count_at_least": 3, "within": "7d"}
        if i % 7 == 0:
            rule["cooldown"] = "1h"
        rules.append(msgspec.convert(rule, TriggerIn))
    return rules


def make_events(count: int, types: int, rng: random.Random) -> list[Event]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i in range(count):
        data = {"amount": rng.randint(1, 1000), "sku": f"SKU-{rng.randint(0, 99)}", "qty": rng.randint(1, 5)}
        if rng.random() < 0.2:
            data["vip"] = True
        when = start + timedelta(seconds=i * 7)
        events.append(
            Event(
                id=f"evt_{i:032x}",
                type=f"type_{rng.randrange(types)}",
                subject=f"user_{rng.randrange(2000)}",
                source="bench",
                channel=rng.choice(["pos", "web", "app"]),
                time=when,
                received_at=when,
                idempotency_key=None,
                data=msgspec.Raw(msgspec.json.encode(data)),
                tenant="bench",
                mode="live",
                seq=i + 1,
            )
        )
    return events


def evaluation_us(trigger_set: TriggerSet, events: list[Event], rounds: int) -> tuple[float, float]:
    """Per-event µs to find and evaluate the candidate rules (median of rounds), and matches/event."""
    samples = []
    matched = 0
    for _ in range(rounds):
        matched = 0
        started = time.perf_counter()
        for event in events:
            view = EventView(event)
            for trigger in trigger_set.for_event_type(event.type):
                if trigger.matches(view):
                    matched += 1
        samples.append((time.perf_counter() - started) / len(events) * 1e6)
    return statistics.median(samples), matched / len(events)


def decode_ceiling_us(events: list[Event], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for event in events:
            msgspec.json.decode(event.data)
        samples.append((time.perf_counter() - started) / len(events) * 1e6)
    return statistics.median(samples)


async def applied_us(rules: list[TriggerIn], events: list[Event], batch: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_sqlite_store(Path(tmp))
        await store.start()
        try:
            now = datetime.now(UTC)
            for i, rule in enumerate(rules):
                definition = msgspec.Raw(msgspec.json.encode(rule))
                await store.registry.put_trigger(TriggerRecord(f"trg_{i:06d}", "bench", "live", definition, now, now))
            definitions = Definitions(store.registry)
            await definitions.refresh()
            scopes = await definitions.for_scopes([("bench", "live")])
            count = store.log.partitions
            started = time.perf_counter()
            for offset in range(0, len(events), batch):
                by_partition: dict[int, list[Event]] = {}
                for event in events[offset : offset + batch]:
                    p = partition_of(event.tenant, event.mode, event.subject, count)
                    by_partition.setdefault(p, []).append(event)
                for p, part in sorted(by_partition.items()):
                    effects = await plan_triggers(part, scopes, store.derived.partition(p), now)
                    assert await store.derived.apply(EffectBatch(p, effects, None))
            elapsed = time.perf_counter() - started
        finally:
            await store.close()
        fired = 0
        for p in range(count):
            with sqlite3.connect(partition_file(Path(tmp), p)) as conn:
                fired += conn.execute("SELECT count(*) FROM actions").fetchone()[0]
            conn.close()
        return elapsed / len(events) * 1e6, fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--types", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(42)
    rules = make_rules(args.rules, args.types, rng)
    events = make_events(args.events, args.types, rng)
    compiled = [compile_trigger(f"trg_{i:06d}", r, i) for i, r in enumerate(rules)]
    trigger_set = TriggerSet(compiled, DEFAULT_TYPE_MAPPINGS)

    evaluation, matches = evaluation_us(trigger_set, events, args.rounds)
    ceiling = decode_ceiling_us(events, args.rounds)
    applied, fired = asyncio.run(applied_us(rules, events, args.batch))

    print(f"rules: {args.rules} active over {args.types} types; {args.events} events; python {sys.version.split()[0]}")
    print(f"{'figure':<44}{'µs/event':>10}{'target':>10}  verdict")
    verdict = "PASS" if evaluation <= TARGET_US else "MISS"
    print(f"{'evaluation (index + conditions)':<44}{evaluation:>10.2f}{TARGET_US:>10.1f}  {verdict}")
    print(f"{'  of which: decoding data once (ceiling)':<44}{ceiling:>10.2f}")
    print(f"{'applied on SQLite (windows, actions, commit)':<44}{applied:>10.2f}")
    print(f"candidate rules per event: {len(compiled) / args.types:.0f}; conditions matched per event: {matches:.2f}")
    print(f"actions fired: {fired} ({fired / args.events:.2f} per event); events/s applied: {1e6 / applied:,.0f}")


if __name__ == "__main__":
    main()
