"""Waiting for processing from another process: what `?wait=processed`, document 002's
inline results and document 003's `/sync` do before they answer.

An event is processed once every consumer's checkpoint in its partition has passed its
offset; the API waits for that through the store (`DerivedState.wait_checkpoint`), so it
works whether the worker runs beside it, in another process, or on another machine.

With a bus, a waiter looks at the checkpoints once, then again each time the bus says a
checkpoint of the partition moved, and at the latest every NOTICE_FALLBACK_SECONDS: the store
still decides, a notice only says when to look (a lost one costs that latency). While the bus
is not listening, it polls the store as without one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence

from headwater.bus import NOTICE_FALLBACK_SECONDS, Bus
from headwater.events import Mode
from headwater.storage.base import Store
from headwater.storage.records import ActionQuery, ActionRecord

CONSUMERS = ("facts", "triggers")


async def processed(
    store: Store,
    positions: Iterable[tuple[int, int]],
    timeout: float,
    consumers: Sequence[str] = CONSUMERS,
    bus: Bus | None = None,
) -> bool:
    """Wait until the consumers have applied every (partition, offset); False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: dict[int, int] = {}
    for partition, seq in positions:
        last[partition] = max(seq, last.get(partition, 0))
    for partition, seq in sorted(last.items()):
        if not await _reached(store, bus, consumers, partition, seq, deadline):
            return False
    return True


async def _reached(
    store: Store, bus: Bus | None, consumers: Sequence[str], partition: int, seq: int, deadline: float
) -> bool:
    loop = asyncio.get_running_loop()
    while True:
        # Taken before the look: a notice sent between the look and the wait still wakes it.
        woken = bus.woken(partition) if bus is not None else None
        left = max(0.0, deadline - loop.time())
        if woken is None:
            return await store.derived.wait_checkpoint(consumers, partition, seq, left)
        if await store.derived.wait_checkpoint(consumers, partition, seq, 0):
            return True
        if left <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, NOTICE_FALLBACK_SECONDS)):
                await woken.wait()


async def actions_fired(
    store: Store, tenant: str, mode: Mode, event_ids: Sequence[str]
) -> dict[str, list[ActionRecord]]:
    """The actions each (processed) event fired, highest priority first."""
    fired: dict[str, list[ActionRecord]] = {}
    for event_id in event_ids:
        rows = await store.derived.list_actions(ActionQuery(tenant, mode, event_id=event_id, limit=1000))
        # Newest first from the store; evaluation order is priority, then trigger age.
        fired[event_id] = sorted((a for _, a in reversed(rows)), key=lambda a: -a.priority)
    return fired
