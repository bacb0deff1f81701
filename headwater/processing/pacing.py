"""Long loops of pure Python hand the event loop back now and then.

A worker runs a consumer per partition on one event loop; planning a large page is a few
hundred milliseconds of Python with no await in it. Without a pause, every other partition,
the lease renewals and the look at the log's head wait behind it (a worker that joins would
wait seconds for its share). A pause every few hundred items costs a few microseconds.
"""

from __future__ import annotations

import asyncio

EVERY = 256


async def pace(i: int) -> None:
    """Yield to the event loop once every `EVERY` items (call with the item's index)."""
    if i % EVERY == EVERY - 1:
        await asyncio.sleep(0)
