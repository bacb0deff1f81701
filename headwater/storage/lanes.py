"""The writers' queue, fair between tenants: a lane per tenant, taken from in turn.

A plain FIFO lets a tenant with a deep backlog (a flood of 1,000-event batches) put every
other tenant's small request behind all of it, and a full queue then refuses everyone. Here:
- a group (one transaction) takes one job from each waiting lane in turn, and starts with the
  lane after the one the last group started with, so a small request from a quiet tenant goes
  into the next group, whatever the loud one has queued;
- small jobs (at most `SMALL_JOB` events: single events, a few at a time) go first, in a group of
  their own: a quiet tenant's event then waits out the group in flight and its own short one,
  not also a flood's 1,000-event batch in the same transaction. So that a stream of small jobs
  cannot hold the large ones back for good, a group that passed over a large job is followed by
  one that takes every lane in turn again;
- a group stops at `max_size` events once it holds more than one job, so the group a newcomer
  waits out is bounded too;
- the queue's limit refuses the tenant over its share: a request is refused only when the
  queue is over its limit *and* its own lane holds more than an even share of that limit
  among the lanes waiting. A quiet tenant is admitted past a flood, and the queue can hold
  at most twice its limit.

Jobs that are not a tenant's (a worker's leases and checkpoints) have the lane `None`; a job
put `first` goes ahead of every lane.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

J = TypeVar("J")

SMALL_JOB = 16  # events


class Lanes(Generic[J]):
    """Not thread-safe: the SQLite writer uses it under its condition's lock, the PostgreSQL
    writer from its event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self._first: deque[tuple[J, int]] = deque()
        self._lanes: OrderedDict[Hashable, deque[tuple[J, int]]] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._passed_over = False  # the last group left a large job waiting for small ones

    def __bool__(self) -> bool:
        return bool(self._first or self._lanes)

    def admits(self, lane: Hashable, size: int) -> bool:
        """Whether a job of `size` events may join `lane` now. An empty queue admits any size,
        so that a single large batch is never refused forever."""
        if not self or self.pending + size <= self.limit:
            return True
        waiting = len(self._lanes) + (lane not in self._lanes)
        return self._sizes.get(lane, 0) + size <= self.limit // waiting

    def put(self, lane: Hashable, job: J, size: int, first: bool = False) -> None:
        self.pending += size
        if first:
            self._first.append((job, size))
            return
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
            self._sizes[lane] = 0
        queue.append((job, size))
        self._sizes[lane] += size

    def take(self, max_size: int | None) -> list[J]:
        """The next group: jobs put `first`, then one job per lane in turn, as long as each
        fits in `max_size` events (None: everything waiting). Never empty unless the queue is."""
        jobs: list[J] = []
        size = 0
        while self._first:
            job, job_size = self._first.popleft()
            jobs.append(job)
            size += job_size
        if max_size is None:
            for lane, queue in self._lanes.items():
                jobs.extend(job for job, _ in queue)
                size += self._sizes[lane]
            self._lanes.clear()
            self._sizes.clear()
            self.pending -= size
            return jobs
        order = list(self._lanes)
        # The next group starts one lane further on.
        if len(order) > 1:
            self._lanes.move_to_end(order[0])
        heads = [self._lanes[lane][0][1] for lane in order] or [0]
        small_only = not self._passed_over and min(heads) <= SMALL_JOB < max(heads)
        self._passed_over = small_only
        while order:
            for lane in list(order):
                queue = self._lanes[lane]
                job, job_size = queue[0]
                if small_only and job_size > SMALL_JOB:
                    order.remove(lane)
                    continue
                if jobs and size + job_size > max_size:
                    order.remove(lane)  # it waits for the next group; a smaller job may still fit
                    continue
                queue.popleft()
                jobs.append(job)
                size += job_size
                self._sizes[lane] -= job_size
                if not queue:
                    del self._lanes[lane]
                    del self._sizes[lane]
                    order.remove(lane)
        self.pending -= size
        return jobs
