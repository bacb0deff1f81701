"""The facts engine: every event in the log is a fact, and facts drive challenges.

A fact is a pure function of its event (`make_fact`), so facts are not written anywhere:
they are read from the log, up to the facts consumer's checkpoint. What a batch writes is
what its facts change: challenge progress, completions, badges, points, the award events it
appends, and each counting fact's effects (for `/sync`).

A batch is planned in steps, so that the state is read in bulk and the logic is pure:
1. The plan (pure): which challenges each fact counts for (those on its own fact type whose
   conditions match, within their time bounds) and which progress buckets that touches.
2. One bulk read of those buckets, then the progress applied in log order, in memory. A
   target crossed is noted, not yet decided. (A streak longer than the buckets read asks
   for more: they are read, and the pass starts over on the larger snapshot.)
3. For the pairs that crossed a target (rare), one read of their completions and of the
   badges their participants hold; then each crossing, in order, is a new completion or not,
   and a new one is announced and rewarded.

The checkpoint's compare-and-set applies each range of the log once; should a checkpoint
ever go back, each progress row's log offset (its last fact) keeps any fact from counting
twice. The per-event cost is the challenges on the event's own fact type, whatever the
number of challenges elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import msgspec

from headwater.clock import to_us
from headwater.events import Event
from headwater.ids import fact_id_for
from headwater.parsing import is_number
from headwater.processing.awards import MAX_AWARD_DEPTH, Awards, award_depth, award_event, completion_key, fact_type_of
from headwater.processing.conditions import EventView
from headwater.processing.definitions import Scope, ScopeDefinitions
from headwater.processing.gamification import (
    ChallengeSet,
    CompiledChallenge,
    bucket_label,
    bucket_of,
    local_day,
    plain,
)
from headwater.processing.pacing import pace
from headwater.storage.derived import StateReads
from headwater.storage.effects import Effects
from headwater.storage.records import Completion, DistinctValue, Fact, ProgressRange, ProgressValue

MAX_COMPLETIONS_PER_FACT = 100
MAX_DISTINCT_VALUE = 200
# Streak periods read around a new one in the first bulk read; a longer run reads on, in
# steps of STREAK_READ_ON.
STREAK_LOOKAROUND = 40
STREAK_READ_ON = 400
_encode = msgspec.json.encode

Pair = tuple[str, str]  # (challenge_id, participant)

__all__ = ["Award", "ProgressChange", "fact_id_for", "make_fact", "plan_facts", "read_effects"]


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


class FactEffects(msgspec.Struct, array_like=True):
    """What processing one fact changed, kept with the fact (compactly: this is written for
    every fact that counts for a challenge) and answered by `/sync`."""

    progress: list[Change] = msgspec.field(default_factory=list)
    awards: list[Award] = msgspec.field(default_factory=list)


_effects = msgspec.json.Decoder(FactEffects)


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


class ReadMore(Exception):
    """A streak ran past the buckets read: read these too, and plan the batch again."""

    def __init__(self, pair: Pair, low: int, high: int) -> None:
        super().__init__(pair, low, high)
        self.range: ProgressRange = (*pair, low, high)


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
    read for; the plan makes sure that covers every bucket the batch looks at.

    The rows as read are kept apart from the cells the pass changes, so that the pass can
    start over (`reset`) after reading more."""

    def __init__(self, retry: bool = False) -> None:
        self.retry = retry  # a dead letter applied again: it was never counted
        self.ranges: dict[Pair, tuple[int, int]] = {}
        self.value_ranges: dict[Pair, tuple[int, int]] = {}
        self.read_rows: list[ProgressValue] = []
        self.read_values: list[tuple[str, str, int, str]] = []
        self.cells: dict[Pair, dict[int, _Cell]] = {}  # every wanted pair, after `reset`
        self.values: dict[Pair, dict[int, set[str]]] = {}
        self.new_values: list[DistinctValue] = []

    @staticmethod
    def _want(ranges: dict[Pair, tuple[int, int]], pair: Pair, low: int, high: int) -> None:
        known = ranges.get(pair)
        ranges[pair] = (low, high) if known is None else (min(known[0], low), max(known[1], high))

    def want(self, pair: Pair, low: int, high: int) -> None:
        self._want(self.ranges, pair, low, high)

    def want_values(self, pair: Pair, low: int, high: int) -> None:
        self._want(self.value_ranges, pair, low, high)

    async def read(self, state: StateReads) -> None:
        ranges = [(c, p, lo, hi) for (c, p), (lo, hi) in self.ranges.items()]
        value_ranges = [(c, p, lo, hi) for (c, p), (lo, hi) in self.value_ranges.items()]
        rows, values = await asyncio.gather(
            state.progress(ranges) if ranges else _nothing(),
            state.distinct_values(value_ranges) if value_ranges else _nothing(),
        )
        self.read_rows.extend(rows)
        self.read_values.extend(values)

    async def read_more(self, state: StateReads, wanted: ProgressRange) -> None:
        c, p, low, high = wanted
        self.read_rows.extend(await state.progress([wanted]))
        self.want((c, p), low, high)

    def reset(self) -> None:
        cells: dict[Pair, dict[int, _Cell]] = {pair: {} for pair in self.ranges}
        for c, p, bucket, value, reached, seq in self.read_rows:
            cells[c, p].setdefault(bucket, _Cell(value, reached, seq))
        self.cells = cells
        self.values = {}
        for c, p, bucket, seen in self.read_values:
            self.values.setdefault((c, p), {}).setdefault(bucket, set()).add(seen)
        self.new_values = []

    def counted(self, pair: Pair, bucket: int, seq: int) -> bool:
        """Whether the fact at log offset `seq` was counted in this bucket already: facts are
        applied in log order, so a bucket's last offset says which ones it has seen."""
        if self.retry:
            return False
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
        cell.seq = max(cell.seq, seq)
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
        cell.seq = max(cell.seq, seq)
        cell.dirty = True
        return False

    def run_around(self, pair: Pair, bucket: int) -> tuple[int, int]:
        """(first, last) of the run of consecutive buckets holding `bucket`."""
        cells = self.cells[pair]
        low, high = self.ranges[pair]
        first = last = bucket
        while first - 1 in cells:
            first -= 1
        if first - 1 < low:
            raise ReadMore(pair, low - STREAK_READ_ON, low - 1)
        while last + 1 in cells:
            last += 1
        if last + 1 > high:
            raise ReadMore(pair, high + 1, high + STREAK_READ_ON)
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

    def flush(self, effects: Effects) -> None:
        effects.progress.extend(
            (c, p, b, cell.value, cell.reached, cell.seq)
            for (c, p), cells in self.cells.items()
            for b, cell in cells.items()
            if cell.dirty
        )
        effects.values.extend(self.new_values)


async def _nothing() -> list[Any]:
    return []


class _Step(msgspec.Struct, gc=False):
    """One challenge a fact counts for: what it adds, and where. Untracked by the cyclic GC,
    like `_Cell`: nothing it refers to refers back to it."""

    challenge: CompiledChallenge
    pair: Pair
    bucket: int  # the period bucket (the day for rolling periods, the streak unit for streaks)
    delta: float = 1.0
    value: str = ""  # distinct


class _Crossing(msgspec.Struct, gc=False):
    """A target crossed: a completion unless the store or this batch has it already (or, for
    a repeatable rolling window, one whose window overlaps). Decided after the pass."""

    challenge: CompiledChallenge
    change: Change
    occurrence: str
    period: int
    overlap: tuple[int, int] | None = None  # periods in which another completion rules this one out


class _FactRun:
    """One new fact: its plan, then its progress, then its completions and awards."""

    __slots__ = ("at_us", "crossings", "depth", "effects", "event", "participant", "progress", "scope", "seq", "steps")
    effects: FactEffects  # while applying
    progress: _Progress

    def __init__(
        self,
        scope: ScopeDefinitions,
        event: Event,
        participant: str,
        depth: int,
        candidates: tuple[CompiledChallenge, ...],
    ) -> None:
        assert event.seq is not None, "facts are made from events in the log"
        self.scope = scope
        self.event = event
        self.seq = event.seq
        self.participant = participant
        self.depth = depth
        self.at_us = at_us = to_us(event.time)
        self.crossings: list[_Crossing] = []
        challenges = scope.challenges
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

    def apply(self, progress: _Progress) -> bytes | None:
        """Apply the steps' progress; the fact's effects, encoded, when it changed progress
        and crossed no target (with a crossing, they are encoded once it is decided)."""
        self.progress = progress
        self.effects = effects = FactEffects()
        self.crossings = []
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
        if self.crossings or not effects.progress:
            return None
        # Kept as bytes only: a batch's effects are many small objects, each of which the
        # cyclic GC would otherwise track (and traverse) until the write ends.
        del self.effects
        return _encode(effects)

    def _change(self, c: CompiledChallenge, kind: str, bucket: int, before: float, after: float) -> Change:
        change = [c.id, kind, bucket, before, after, c.target, False]
        self.effects.progress.append(change)
        return change

    def _cross(self, c: CompiledChallenge, change: Change, occurrence: str, period: int) -> None:
        self.crossings.append(_Crossing(c, change, occurrence, period))

    def _crossings(self, c: CompiledChallenge, change: Change, bucket: int, before: float, after: float) -> None:
        target = c.target
        if not c.repeatable:
            if before < target <= after:
                self._cross(c, change, "once", bucket)
        elif c.period.kind == "all_time":
            # Every multiple of the target reached completes once more.
            first = max(1, math.floor(before / target) + 1)
            last = min(math.floor(after / target), first + MAX_COMPLETIONS_PER_FACT - 1)
            for k in range(first, last + 1):
                self._cross(c, change, str(k), bucket)
        elif before < target <= after:  # once per calendar period
            self._cross(c, change, c.period.label(bucket), bucket)

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
                self._cross_rolling(c, change, end)

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
                self._cross_rolling(c, change, end)

    def _cross_rolling(self, c: CompiledChallenge, change: Change, end: int) -> None:
        if not c.repeatable:
            self._cross(c, change, "once", end)
            return
        # Repeatable: once per window; the windows of two completions never overlap.
        days = c.period.days
        self.crossings.append(_Crossing(c, change, bucket_label("daily", end), end, (end - days + 1, end + days - 1)))

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
                self._cross(c, change, "once", bucket)
            return
        lowest = max(1, math.floor(before / target) + 1)
        for k in range(lowest, min(math.floor(after / target), lowest + MAX_COMPLETIONS_PER_FACT - 1) + 1):
            self._cross(c, change, f"{bucket_label(c.streak_unit, first)}#{k}", first + int(target) * k - 1)

    def complete(self, book: dict[Pair, dict[str, int]], awards: Awards, effects: Effects, now: datetime) -> bytes:
        """Decide the crossings, in order, against the completions known; the fact's effects."""
        event, participant = self.event, self.participant
        for x in self.crossings:
            c = x.challenge
            known = book.setdefault((c.id, participant), {})
            if x.occurrence in known:
                continue
            if x.overlap is not None and any(x.overlap[0] <= p <= x.overlap[1] for p in known.values()):
                continue
            known[x.occurrence] = x.period
            effects.completions.append(
                Completion(event.tenant, event.mode, c.id, participant, x.occurrence, x.period, event.time, event.id)
            )
            self._reward(x, awards, now)
        encoded = _encode(self.effects)
        del self.effects
        return encoded

    def _reward(self, x: _Crossing, awards: Awards, now: datetime) -> None:
        c, change, event, participant = x.challenge, x.change, self.event, self.participant
        change[6] = True
        depth = self.depth + 1
        self.effects.awards.append(Award("challenge.completed", challenge_id=c.id, occurrence=x.occurrence))
        data = {
            "challenge_id": c.id,
            "challenge_name": c.name,
            "occurrence": x.occurrence,
            "progress": plain(change[4]),
            "target": plain(c.target),
            "cause_event_id": event.id,
            "depth": depth,
        }
        key = completion_key(c.id, participant, x.occurrence)
        awards.announce(award_event(event, "challenge.completed", participant, key, data, now))
        reason = f"challenge:{c.id}"
        badge = c.reward_badge
        if (
            badge is not None
            and badge in self.scope.badges
            and awards.grant_badge(event, participant, badge, reason, depth, now)
        ):
            self.effects.awards.append(Award("badge.awarded", badge=badge, reason=reason))
        points = c.reward_points
        if points is not None:
            cause = f"challenge:{c.id}:{x.occurrence}"
            if awards.grant_points(event, participant, points, reason, cause, depth, now, self.scope.settings):
                self.effects.awards.append(Award("points.awarded", points=points, reason=reason))


async def _runs(events: Sequence[Event], scopes: dict[Scope, ScopeDefinitions]) -> list[_FactRun]:
    """The challenge steps each event's fact would take: everything that needs no state.
    Facts with no step need no write at all: they are read from the log."""
    runs: list[_FactRun] = []
    for i, event in enumerate(events):
        await pace(i)
        participant = event.subject
        if participant is None:
            continue
        scope = scopes.get((event.tenant, event.mode))
        challenges: ChallengeSet | None = None if scope is None else scope.challenges
        if scope is None or not challenges:
            continue
        candidates = challenges.for_fact_type(fact_type_of(event))
        if not candidates:
            continue
        depth = award_depth(event)
        if depth < MAX_AWARD_DEPTH:
            run = _FactRun(scope, event, participant, depth, candidates)
            if run.steps:
                runs.append(run)
    return runs


async def _apply_progress(runs: list[_FactRun], progress: _Progress, effects: Effects) -> list[_FactRun]:
    """The progress pass; the runs that crossed a target."""
    progress.reset()
    crossed = []
    encoded: list[tuple[str, bytes]] = []
    for i, run in enumerate(runs):
        await pace(i)
        raw = run.apply(progress)
        if raw is not None:
            encoded.append((fact_id_for(run.event.id), raw))
        elif run.crossings:
            crossed.append(run)
    effects.fact_effects.extend(encoded)
    return crossed


async def _complete(state: StateReads, crossed: list[_FactRun], effects: Effects, now: datetime | None) -> None:
    pairs = sorted({(x.challenge.id, run.participant) for run in crossed for x in run.crossings})
    participants = sorted(
        {
            (run.event.tenant, run.event.mode, run.participant)
            for run in crossed
            if any(x.challenge.reward_badge for x in run.crossings)
        }
    )
    known, held = await asyncio.gather(state.completions(pairs), state.held_badges(participants))
    book: dict[Pair, dict[str, int]] = {}
    for completion in known:
        book.setdefault((completion.challenge_id, completion.participant_id), {})[completion.occurrence] = (
            completion.period
        )
    awards = Awards(held, effects)
    for run in crossed:
        effects.fact_effects.append(
            (fact_id_for(run.event.id), run.complete(book, awards, effects, now or run.event.received_at))
        )


async def plan_facts(
    events: Sequence[Event],
    scopes: dict[Scope, ScopeDefinitions],
    state: StateReads,
    now: datetime | None = None,
    retry: bool = False,
) -> Effects:
    """The effects of each event's fact on its tenant's challenges, in log order. Award events
    are stamped `now`, or (a replay, which must not read the clock) each with its cause's
    receive time. `retry`: the events are dead letters applied again, never counted before."""
    runs = await _runs(events, scopes)
    if not runs:
        return Effects()
    progress = _Progress(retry)
    for run in runs:
        run.plan(progress)
    await progress.read(state)
    while True:
        effects = Effects()
        try:
            crossed = await _apply_progress(runs, progress, effects)
            break
        except ReadMore as more:
            await progress.read_more(state, more.range)
    progress.flush(effects)
    if crossed:
        await _complete(state, crossed, effects, now)
    return effects
