"""Plan the whole log again on the state it made, as after a checkpoint that went back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from headwater.clock import system_now
from headwater.config import Settings
from headwater.events import Event
from headwater.partitions import partition_of
from headwater.processing.definitions import Definitions
from headwater.storage import open_store
from headwater.storage.effects import EffectBatch, Effects

Planner = Callable[[Sequence[Event], Any, Any, datetime], Awaitable[Effects]]


def replan(settings: Settings, planner: Planner, limit: int = 1000) -> Effects:
    """Every partition's events planned and applied once more; what the second pass wrote."""

    async def run() -> Effects:
        store = open_store(settings)
        await store.start()
        try:
            events = await store.log.read_log(0, limit)
            definitions = Definitions(store.registry)
            await definitions.refresh()
            scopes = await definitions.for_scopes({("acme", "live")})
            effects = Effects()
            for partition in range(store.log.partitions):
                mine = [
                    e for e in events if partition_of(e.tenant, e.mode, e.subject, store.log.partitions) == partition
                ]
                planned = await planner(mine, scopes, store.derived.partition(partition), system_now())
                assert await store.derived.apply(EffectBatch(partition, planned, None))
                effects.merge(planned)
            return effects
        finally:
            await store.close()

    return asyncio.run(run())
