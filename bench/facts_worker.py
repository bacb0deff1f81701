"""One worker process for bench/gamification.py: the server's `Worker` with the facts
consumer only (no triggers, no catalog, no webhook delivery), started once the bench says go.

    facts_worker.py STORE GO_FILE

STORE is a data dir, or a PostgreSQL URL.

Prints `ready` once imported, waits for GO_FILE to exist (so that interpreter start-up is not
timed), then works until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gamification import settings_for

from headwater.processing.consumer import FactsEngine
from headwater.processing.worker import Worker
from headwater.runtime import tune_gc


async def main(where: str, go: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    settings = settings_for(where)
    await Worker(settings, engines=(FactsEngine(),), deliveries=False, catalog=False).run(stop)


if __name__ == "__main__":
    tune_gc()  # as `headwater worker` does
    started = time.perf_counter()
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
