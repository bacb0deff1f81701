"""The facts consumer: every event in the log is a fact, and facts drive challenges.

A fact is a pure function of its event (`make_fact`), so facts are not written anywhere:
they are read from the log, up to this consumer's checkpoint. What the consumer writes is
what facts change: challenge progress, completions, badges, points, the award events they
append, and each counting fact's effects (for `/sync`). `apply_facts` runs inside one store
write with the consumer's checkpoint (`Store.process`), so all of it is committed together
or not at all, and the checkpoint's compare-and-set applies each range of the log once.
Should a checkpoint ever go back, each progress row's log offset (its last fact) still
keeps any fact from counting twice.

Per batch: a plan (which challenges each fact counts for: the ones on its own fact type
whose conditions match), one bulk read of the progress those need, the facts applied in
log order in memory, and one bulk write back. Completions and awards, which are rare, are
written as they happen, each under its own unique key. So the per-event cost is the
challenges on the event's fact type, whatever the number of challenges elsewhere.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import msgspec

from headwater.clock import Clock, system_now, to_us
from headwater.events import Event
from headwater.parsing import is_number
from headwater.processing.awards import (
    MAX_AWARD_DEPTH,
    award_depth,
    award_event,
    completion_key,
    fact_type_of,
    grant_badge,
    grant_points,
)
from headwater.processing.conditions import EventView
from headwater.processing.consumer import LogConsumer
from headwater.processing.gamification import (
    ChallengeSet,
    CompiledChallenge,
    GamificationLoader,
    Scope,
    bucket_label,
    bucket_of,
    local_day,
    plain,
)
from headwater.storage.base import Fact, Store
from headwater.storage.derived import ProcessingState
from headwater.storage.gamification import Completion, fact_id_for

MAX_COMPLETIONS_PER_FACT = 100
MAX_DISTINCT_VALUE = 200
# Streak periods read around a new one in the first bulk read; a longer run reads on, in
# steps of STREAK_READ_ON.
STREAK_LOOKAROUND = 40
STREAK_READ_ON = 400
_encode = msgspec.json.encode

Pair = tuple[str, str]  # (challenge_id, participant)

__all__ = ["Award", "FactsConsumer", "ProgressChange", "apply_facts", "fact_id_for", "make_fact", "read_effects"]


class ProgressChange(msgspec.Struct):
    challenge_id: str
    period: str
    before: int | float
    after: int | float
    target: int | float
    completed: bool = False


class Award(msgspec.Struct, omit_defaults=True):
    type: str
    challenge_id: str | None = None
    occurrence: str | None = None
    badge: str | None = None
    points: int | None = None
    reason: str | None = None


# A progress change as kept: [challenge_id, period kind, bucket, before, after, target, completed].
Change = list[Any]


class Effects(msgspec.Struct, array_like=True):
    """What processing one fact changed, kept with the fact (compactly: this is written for
    every fact that counts for a challenge) and answered by `/sync`."""

    progress: list[Change] = msgspec.field(default_factory=list)
    awards: list[Award] = msgspec.field(default_factory=list)


_effects = msgspec.json.Decoder(Effects)


def read_effects(raw: bytes | None) -> tuple[list[ProgressChange], list[Award]]:
    """The stored effects of a fact as `/sync` shows them."""
    if raw is None:
        return [], []
    effects = _effects.decode(raw)
    changes = [
        ProgressChange(cid, bucket_label(kind, bucket), plain(before), plain(after), plain(target), completed)
        for cid, kind, bucket, before, after, target, completed in effects.progress
    ]
    return changes, effects.awards


def make_fact(event: Event) -> Fact:
    """The fact an event establishes. `processed_at` is the event's receive time, not the
    clock, so replaying the log reproduces every fact exactly."""
    return Fact(
        fact_id=fact_id_for(event.id),
        fact_type=fact_type_of(event),
        participant_id=event.subject,
        event_id=event.id,
        tenant=event.tenant,
        mode=event.mode,
        data=event.data,
        occurred_at=event.time,
        processed_at=event.received_at,
    )


def _distinct_value(value: Any) -> str:
    text = _encode(value, order="sorted").decode()
    if len(text) > MAX_DISTINCT_VALUE:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


class _Cell(msgspec.Struct, gc=False):
    """One bucket's progress. Not tracked by the cyclic GC (it holds only numbers): a batch
    keeps thousands alive, and tracking them made collections a large part of the batch."""

    value: float
    reached: int  # µs
    seq: int  # the log offset of its last fact
    dirty: bool = False  # changed in this batch: written back


class _Progress:
    """A batch's challenge progress: read in bulk, changed in memory in log order, written
    back in bulk. Each (challenge, participant) pair holds the buckets of the range it was
    read for; the plan makes sure that covers every bucket the batch looks at."""

    def __init__(self, state: ProcessingState) -> None:
        self.state = state
        self.ranges: dict[Pair, tuple[int, int]] = {}
        self.value_ranges: dict[Pair, tuple[int, int]] = {}
        self.cells: dict[Pair, dict[int, _Cell]] = {}  # every wanted pair, after `load`
        self.values: dict[Pair, dict[int, set[str]]] = {}
        self.new_values: list[tuple[str, str, int, str, int]] = []

    @staticmethod
    def _want(ranges: dict[Pair, tuple[int, int]], pair: Pair, low: int, high: int) -> None:
        known = ranges.get(pair)
        ranges[pair] = (low, high) if known is None else (min(known[0], low), max(known[1], high))

    def want(self, pair: Pair, low: int, high: int) -> None:
        self._want(self.ranges, pair, low, high)

    def want_values(self, pair: Pair, low: int, high: int) -> None:
        self._want(self.value_ranges, pair, low, high)

    def load(self) -> None:
        cells: dict[Pair, dict[int, _Cell]] = {pair: {} for pair in self.ranges}
        self.cells = cells
        if self.ranges:
            for c, p, bucket, value, reached, seq in self.state.load_progress(
                [(c, p, lo, hi) for (c, p), (lo, hi) in self.ranges.items()]
            ):
                cells[c, p][bucket] = _Cell(value, reached, seq)
        if self.value_ranges:
            ranges = [(c, p, lo, hi) for (c, p), (lo, hi) in self.value_ranges.items()]
            for c, p, bucket, seen in self.state.load_values(ranges):
                self.values.setdefault((c, p), {}).setdefault(bucket, set()).add(seen)

    def counted(self, pair: Pair, bucket: int, seq: int) -> bool:
        """Whether the fact at log offset `seq` was counted in this bucket already: facts are
        applied in log order, so a bucket's last offset says which ones it has seen."""
        cell = self.cells[pair].get(bucket)
        return cell is not None and cell.seq >= seq

    def add(self, pair: Pair, bucket: int, delta: float, at_us: int, seq: int) -> float:
        """Add to a bucket's value (reached_at: the latest contributing time); the new value."""
        cells = self.cells[pair]
        cell = cells.get(bucket)
        if cell is None:
            cells[bucket] = _Cell(delta, at_us, seq, True)
            return delta
        cell.value += delta
        if at_us > cell.reached:
            cell.reached = at_us
        cell.seq = seq
        cell.dirty = True
        return cell.value

    def mark(self, pair: Pair, bucket: int, at_us: int, seq: int) -> bool:
        """Count a fact in a streak period (reached_at: the earliest); True when the period is new."""
        cells = self.cells[pair]
        cell = cells.get(bucket)
        if cell is None:
            cells[bucket] = _Cell(1.0, at_us, seq, True)
            return True
        cell.value += 1
        if at_us < cell.reached:
            cell.reached = at_us
        cell.seq = seq
        cell.dirty = True
        return False

    def _extend(self, pair: Pair, low: int, high: int) -> None:
        """Read buckets beyond the range first read (a streak longer than the look-around)."""
        cells = self.cells[pair]
        for _, _, bucket, value, reached, seq in self.state.load_progress([(*pair, low, high)]):
            if bucket not in cells:
                cells[bucket] = _Cell(value, reached, seq)
        self._want(self.ranges, pair, low, high)

    def run_around(self, pair: Pair, bucket: int) -> tuple[int, int]:
        """(first, last) of the run of consecutive buckets holding `bucket`."""
        cells = self.cells[pair]
        first = last = bucket
        while True:
            while first - 1 in cells:
                first -= 1
            low = self.ranges[pair][0]
            if first - 1 >= low:
                break
            self._extend(pair, low - STREAK_READ_ON, low - 1)
        while True:
            while last + 1 in cells:
                last += 1
            high = self.ranges[pair][1]
            if last + 1 <= high:
                break
            self._extend(pair, high + 1, high + STREAK_READ_ON)
        return first, last

    def totals(self, pair: Pair, low: int, high: int) -> dict[int, float]:
        return {b: cell.value for b, cell in self.cells[pair].items() if low <= b <= high}

    def add_value(self, pair: Pair, bucket: int, value: str, at_us: int) -> bool:
        """Note a distinct value in a bucket; True when it is new there."""
        buckets = self.values.setdefault(pair, {})
        seen = buckets.get(bucket)
        if seen is None:
            seen = buckets[bucket] = set()
        if value in seen:
            return False
        seen.add(value)
        self.new_values.append((*pair, bucket, value, at_us))
        return True

    def value_buckets(self, pair: Pair, value: str, low: int, high: int) -> list[int]:
        return [b for b, seen in self.values.get(pair, {}).items() if low <= b <= high and value in seen]

    def distinct(self, pair: Pair, low: int, high: int) -> int:
        found: set[str] = set()
        for b, seen in self.values.get(pair, {}).items():
            if low <= b <= high:
                found |= seen
        return len(found)

    def flush(self) -> None:
        rows = [
            (c, p, b, cell.value, cell.reached, cell.seq)
            for (c, p), cells in self.cells.items()
            for b, cell in cells.items()
            if cell.dirty
        ]
        if rows:
            self.state.save_progress(rows)
        if self.new_values:
            self.state.save_values(self.new_values)


class _Step(msgspec.Struct, gc=False):
    """One challenge a fact counts for: what it adds, and where. Untracked by the cyclic GC,
    like `_Cell`: nothing it refers to refers back to it."""

    challenge: CompiledChallenge
    pair: Pair
    bucket: int  # the period bucket (the day for rolling periods, the streak unit for streaks)
    delta: float = 1.0
    value: str = ""  # distinct


class _FactRun:
    """One new fact: its plan, then its progress and awards."""

    __slots__ = ("at_us", "depth", "effects", "event", "now", "participant", "progress", "seq", "state", "steps")
    effects: Effects  # while applying

    def __init__(
        self,
        challenges: ChallengeSet,
        event: Event,
        participant: str,
        depth: int,
        candidates: tuple[CompiledChallenge, ...],
    ) -> None:
        assert event.seq is not None, "facts are made from events in the log"
        self.event = event
        self.seq = event.seq
        self.participant = participant
        self.depth = depth
        self.at_us = at_us = to_us(event.time)
        steps: list[_Step] = []
        view = EventView(event)
        day: date | None = None
        for c in candidates:
            if c.starts_us is not None and at_us < c.starts_us:
                continue
            if c.ends_us is not None and at_us >= c.ends_us:
                continue
            if not c.matches(view):
                continue
            delta, value = 1.0, ""
            if c.metric == "sum":
                assert c.field is not None
                raw = c.field(view)
                if not is_number(raw):
                    continue
                delta = float(raw)
            elif c.metric == "distinct":
                assert c.field is not None
                raw = c.field(view)
                if raw is EventView.MISSING or raw is None:
                    continue
                value = _distinct_value(raw)
            if day is None:
                day = local_day(event.time, challenges.tz)
            # A streak is bucketed by its unit; a rolling period by the day (`bucket_of` gives the ordinal).
            bucket = bucket_of(c.streak_unit or c.period.kind, day)
            steps.append(_Step(c, (c.id, participant), bucket, delta, value))
        # A tuple of untracked steps: the cyclic GC untracks it too.
        self.steps = tuple(steps)

    def plan(self, progress: _Progress) -> None:
        for step in self.steps:
            c, pair, b = step.challenge, step.pair, step.bucket
            if c.metric == "streak":
                progress.want(pair, b - STREAK_LOOKAROUND, b + STREAK_LOOKAROUND)
            elif c.period.kind == "rolling":
                days = c.period.days
                if c.metric == "distinct":
                    progress.want(pair, b, b + days - 1)
                    progress.want_values(pair, b - days + 1, b + days - 1)
                else:
                    progress.want(pair, b - days + 1, b + days - 1)
            else:
                progress.want(pair, b, b)
                if c.metric == "distinct":
                    progress.want_values(pair, b, b)

    def apply(self, state: ProcessingState, progress: _Progress, now: datetime) -> bytes | None:
        """Apply the steps; the fact's effects, encoded, when it changed any progress."""
        self.state, self.progress, self.now = state, progress, now
        self.effects = effects = Effects()  # a plan whose write failed may be applied again
        seq, at_us = self.seq, self.at_us
        for step in self.steps:
            c, pair, bucket = step.challenge, step.pair, step.bucket
            if progress.counted(pair, bucket, seq):
                continue  # applied before (a checkpoint that went back): nothing counts twice
            if c.metric == "streak":
                self._streak(step)
            elif c.period.kind == "rolling":
                if c.metric == "distinct":
                    self._rolling_distinct(step)
                else:
                    self._rolling_sum(step)
            else:
                if c.metric == "distinct" and not progress.add_value(pair, bucket, step.value, at_us):
                    continue
                after = progress.add(pair, bucket, step.delta, at_us, seq)
                before = after - step.delta
                change = self._change(c, c.period.kind, bucket, before, after)
                self._crossings(c, change, bucket, before, after)
        # Kept as bytes only: a batch's effects are many small objects, each of which the
        # cyclic GC would otherwise track (and traverse) until the write ends.
        del self.effects
        return _encode(effects) if effects.progress else None

    def _change(self, c: CompiledChallenge, kind: str, bucket: int, before: float, after: float) -> Change:
        change = [c.id, kind, bucket, before, after, c.target, False]
        self.effects.progress.append(change)
        return change

    def _crossings(self, c: CompiledChallenge, change: Change, bucket: int, before: float, after: float) -> None:
        target = c.target
        if not c.repeatable:
            if before < target <= after:
                self._complete(c, change, "once", bucket)
        elif c.period.kind == "all_time":
            # Every multiple of the target reached completes once more.
            first = max(1, math.floor(before / target) + 1)
            last = min(math.floor(after / target), first + MAX_COMPLETIONS_PER_FACT - 1)
            for k in range(first, last + 1):
                self._complete(c, change, str(k), bucket)
        elif before < target <= after:  # once per calendar period
            self._complete(c, change, c.period.label(bucket), bucket)

    def _rolling_sum(self, step: _Step) -> None:
        c, pair, d, delta = step.challenge, step.pair, step.bucket, step.delta
        days = c.period.days
        self.progress.add(pair, d, delta, self.at_us, self.seq)
        rows = self.progress.totals(pair, d - days + 1, d + days - 1)

        def window(end: int) -> float:
            return sum(v for b, v in rows.items() if end - days < b <= end)

        after = window(d)
        change = self._change(c, "daily", d, after - delta, after)
        # A late fact also counts in the windows ending on the later days it falls in.
        for end in [d, *sorted(b for b in rows if d < b <= d + days - 1)]:
            total = after if end == d else window(end)
            if total - delta < c.target <= total:
                self._complete_rolling(c, change, end)

    def _rolling_distinct(self, step: _Step) -> None:
        c, pair, d = step.challenge, step.pair, step.bucket
        days = c.period.days
        if not self.progress.add_value(pair, d, step.value, self.at_us):
            return
        self.progress.add(pair, d, 1.0, self.at_us, self.seq)  # the day's distinct values, for its row
        others = [b for b in self.progress.value_buckets(pair, step.value, d - days + 1, d + days - 1) if b != d]
        later = self.progress.totals(pair, d + 1, d + days - 1)
        change: Change | None = None
        for end in [d, *sorted(later)]:
            total = float(self.progress.distinct(pair, end - days + 1, end))
            before = total if any(end - days < b <= end for b in others) else total - 1
            if change is None:
                change = self._change(c, "daily", d, before, total)
            if before < c.target <= total:
                self._complete_rolling(c, change, end)

    def _complete_rolling(self, c: CompiledChallenge, change: Change, end: int) -> None:
        if not c.repeatable:
            self._complete(c, change, "once", end)
            return
        # Repeatable: once per window; the windows of two completions never overlap.
        days = c.period.days
        if self.state.completion_between(c.id, self.participant, end - days + 1, end + days - 1):
            return
        self._complete(c, change, bucket_label("daily", end), end)

    def _streak(self, step: _Step) -> None:
        c, pair, bucket = step.challenge, step.pair, step.bucket
        assert c.streak_unit is not None
        if not self.progress.mark(pair, bucket, self.at_us, self.seq):
            return  # the period already had a fact: the streak is unchanged
        first, last = self.progress.run_around(pair, bucket)
        after = float(last - first + 1)
        before = float(max(bucket - first, last - bucket))  # the longer of the runs it joined
        change = self._change(c, c.streak_unit, bucket, before, after)
        target = c.target
        if not c.repeatable:
            if before < target <= after:
                self._complete(c, change, "once", bucket)
            return
        lowest = max(1, math.floor(before / target) + 1)
        for k in range(lowest, min(math.floor(after / target), lowest + MAX_COMPLETIONS_PER_FACT - 1) + 1):
            self._complete(c, change, f"{bucket_label(c.streak_unit, first)}#{k}", first + int(target) * k - 1)

    def _complete(self, c: CompiledChallenge, change: Change, occurrence: str, period: int) -> None:
        event, participant, state = self.event, self.participant, self.state
        completion = Completion(event.tenant, event.mode, c.id, participant, occurrence, period, event.time, event.id)
        if not state.record_completion(completion):
            return
        change[6] = True
        depth = self.depth + 1
        self.effects.awards.append(Award("challenge.completed", challenge_id=c.id, occurrence=occurrence))
        data = {
            "challenge_id": c.id,
            "challenge_name": c.name,
            "occurrence": occurrence,
            "progress": plain(change[4]),
            "target": plain(c.target),
            "cause_event_id": event.id,
            "depth": depth,
        }
        key = completion_key(c.id, participant, occurrence)
        state.append_events([award_event(event, "challenge.completed", participant, key, data, self.now)])
        reason = f"challenge:{c.id}"
        badge = c.reward_badge
        if (
            badge is not None
            and state.badge_defined(event.tenant, event.mode, badge)
            and grant_badge(state, event, participant, badge, reason, depth, self.now)
        ):
            self.effects.awards.append(Award("badge.awarded", badge=badge, reason=reason))
        points = c.reward_points
        if points is not None:
            cause = f"challenge:{c.id}:{occurrence}"
            if grant_points(state, event, participant, points, reason, cause, depth, self.now):
                self.effects.awards.append(Award("points.awarded", points=points, reason=reason))


Plan = list[_FactRun]


def plan_facts(events: Sequence[Event], sets: dict[Scope, ChallengeSet]) -> Plan:
    """The challenge steps each event's fact would take: everything that needs no state,
    worked out before the write (the consumer does this in `prepare`). Facts with no step
    need no write at all: they are read from the log."""
    plan: Plan = []
    for event in events:
        participant = event.subject
        if participant is None:
            continue
        challenges = sets.get((event.tenant, event.mode))
        if not challenges:
            continue
        candidates = challenges.for_fact_type(fact_type_of(event))
        if not candidates:
            continue
        depth = award_depth(event)
        if depth < MAX_AWARD_DEPTH:
            run = _FactRun(challenges, event, participant, depth, candidates)
            if run.steps:
                plan.append(run)
    return plan


def apply_plan(state: ProcessingState, plan: Plan, now: datetime) -> None:
    """Apply the facts' steps, in log order, inside the write."""
    if not plan:
        return
    progress = _Progress(state)
    for run in plan:
        run.plan(progress)
    progress.load()
    effects = []
    for run in plan:
        encoded = run.apply(state, progress, now)
        if encoded is not None:
            effects.append((fact_id_for(run.event.id), encoded))
    progress.flush()
    if effects:
        state.put_fact_effects(effects)


def apply_facts(
    state: ProcessingState, events: Sequence[Event], sets: dict[Scope, ChallengeSet], now: datetime
) -> None:
    """Make each event's fact and apply it to its tenant's challenges, in log order."""
    apply_plan(state, plan_facts(events, sets), now)


class FactsConsumer(LogConsumer[Plan]):
    """Applies every event to facts and gamification, in log order. The plan (facts, matching
    challenges, buckets) is made before the write, so the writer holds only the state work."""

    NAME = "facts"

    def __init__(self, store: Store, loader: GamificationLoader, clock: Clock = system_now, **kwargs: Any) -> None:
        async def prepare(events: Sequence[Event]) -> Plan:
            sets = await loader.sets_for({(e.tenant, e.mode) for e in events if e.subject is not None})
            return plan_facts(events, sets)

        def apply(state: ProcessingState, events: Sequence[Event], plan: Plan, now: datetime) -> None:
            apply_plan(state, plan, now)

        async def wanted(scopes: set[Scope]) -> bool:
            # Facts are read from the log itself; only challenges make the consumer write.
            sets = await loader.sets_for(scopes)
            return any(sets.get(scope) for scope in scopes)

        super().__init__(store, self.NAME, prepare, apply, clock, wanted=wanted, **kwargs)
