"""Waiting for processing from another process: what `?wait=processed`, document 002's
inline results and document 003's `/sync` do before they answer.

An event is processed once every consumer's checkpoint in its partition has passed its
offset; the API waits for that through the store (`DerivedState.wait_checkpoint`), so it
works whether the worker runs beside it, in another process, or on another machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from headwater.events import Mode
from headwater.storage.base import Store
from headwater.storage.records import ActionQuery, ActionRecord

CONSUMERS = ("facts", "triggers")


async def processed(
    store: Store, positions: Iterable[tuple[int, int]], timeout: float, consumers: Sequence[str] = CONSUMERS
) -> bool:
    """Wait until the consumers have applied every (partition, offset); False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: dict[int, int] = {}
    for partition, seq in positions:
        last[partition] = max(seq, last.get(partition, 0))
    for partition, seq in sorted(last.items()):
        left = max(0.0, deadline - loop.time())
        if not await store.derived.wait_checkpoint(consumers, partition, seq, left):
            return False
    return True


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
