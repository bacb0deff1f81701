"""Worker processes: running one, and starting, watching and stopping several.

`headwater worker --processes N` and `headwater serve` (one worker beside the API) start
child processes of `headwater worker`. A child dies with its parent (Linux's parent-death
signal, and a look at the parent every second besides), so a killed server never leaves a
worker behind; a child that dies on its own is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from headwater.config import Settings
from headwater.runtime import tune_gc

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger("headwater.processes")
RESTART_DELAY = 1.0
PARENT_CHECK_SECONDS = 1.0
STOP_SECONDS = 20.0
PR_SET_PDEATHSIG = 1


def run_worker(settings: Settings, stop_with: int | None = None) -> None:
    """One worker in this process until SIGTERM or SIGINT (or, with `stop_with`, until that
    process is gone)."""
    from headwater.processing.worker import Worker

    tune_gc()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        worker = asyncio.create_task(Worker(settings).run(stop))
        await asyncio.wait([worker, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        # Everything a worker writes survives a crash, so a stop that hangs may end the hard way.
        done, _ = await asyncio.wait([worker], timeout=STOP_SECONDS)
        if not done:
            _dump_tasks()
            os._exit(1)
        worker.result()

    if stop_with is not None:
        threading.Thread(target=_exit_when_gone, args=(stop_with,), name="headwater-parent", daemon=True).start()
    asyncio.run(main())


def _exit_when_gone(parent: int) -> None:
    """The parent is gone (killed, say): stop, and if stopping takes too long, exit anyway."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_SECONDS + 5)
    os._exit(1)


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        logger.error("worker stop timed out; task still running: %r", task)
        task.print_stack(file=sys.stderr)


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the parent dies (Linux; elsewhere the
    worker's own look at its parent does it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_api(config: uvicorn.Config, sock: socket.socket, workers: Supervisor | None) -> None:
    """uvicorn with `config` on `sock` until SIGTERM or SIGINT; the first signal also begins the
    workers' stop, so a signal to the whole process group (systemd's default) does not make the
    supervisor start a worker again while the server shuts down."""
    import uvicorn

    from headwater.api import live

    class ApiServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            live.stop_streams()
            if workers is not None:
                workers.stopping()
            super().handle_exit(sig, frame)

    # Once stopped, uvicorn raises the signal again under the handler it found: this one, so
    # that the caller goes on to stop the workers rather than die of the default handler.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    ApiServer(config).run(sockets=[sock])


def serve_api(
    make_config: Callable[[], uvicorn.Config], sock: socket.socket, workers: Supervisor | None, processes: int
) -> None:
    """`processes` API processes on `sock`: this one and `processes - 1` forked children, which
    the kernel hands connections in turn. Each makes its own app and store after the fork (a
    pool or an event loop must not cross one). A child dies with this process; this one stops
    them when it stops."""
    children = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's exit status is what its parent sees
            code = 1
            try:
                _die_with_parent()
                run_api(make_config(), sock, None)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    try:
        run_api(make_config(), sock, workers)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


class Supervisor:
    """`count` child worker processes on the settings' store, started again when one dies."""

    def __init__(self, settings: Settings, count: int, env: dict[str, str] | None = None, nice: int = 0) -> None:
        self.settings = settings
        self.count = count
        self.nice = nice
        self.env = {**os.environ, **(env or {})}
        self.children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "headwater", "worker", "--processes", "1",
            "--data-dir", str(self.settings.data_dir), "--stop-with", str(os.getpid()),
        ]  # fmt: skip
        for flag, value in (("--store", self.settings.store), ("--bus", self.settings.bus)):
            if value is not None:
                command += [flag, value]
        nice = self.nice

        def prepare() -> None:
            _die_with_parent()
            if nice:
                os.nice(nice)

        return subprocess.Popen(command, env=self.env, preexec_fn=prepare)

    def start(self) -> None:
        self.children = [self._spawn() for _ in range(self.count)]
        self._watcher = threading.Thread(target=self._watch, name="headwater-supervisor", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_DELAY):
            for i, child in enumerate(self.children):
                if child is not None and child.poll() is not None and not self._stopping.is_set():
                    logger.warning("worker process %d exited with %s; starting it again", child.pid, child.returncode)
                    self.children[i] = self._spawn()

    def stopping(self) -> None:
        """The stop has begun: a child that exits now (a signal to the whole process group, say)
        is not started again."""
        self._stopping.set()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        for child in self.children:
            if child is not None and child.poll() is None:
                child.terminate()
        for child in self.children:
            if child is None:
                continue
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def wait(self) -> None:
        """Until SIGTERM or SIGINT; then stop the children."""
        stopped = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopped.set())
        stopped.wait()
        self.stop()
