"""Settings of the server's Python process itself.

The garbage collector: CPython starts a young-generation collection every 700 net
allocations of container objects (lists, dicts, objects), and each pass walks every young
object still alive. Ingest and the consumers allocate several per event and keep a whole
batch alive while they work on it, so at tens of thousands of events per second the
collector ran hundreds of times a second over tens of thousands of live objects: up to
half of the facts consumer's time with large batches (bench/gamification.py). Reference
counting frees almost everything Headwater allocates; the cyclic collector only has to
find the rare cycle, and running it 70 times less often still does that.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
