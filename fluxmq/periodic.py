"""Work that runs every few seconds on the event loop (timeout scans, $SYS, loop-lag metering)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

log = logging.getLogger("fluxmq")


class Periodic:
    """Calls `tick(late)` every `interval` seconds, `late` being how much later than asked the
    loop woke up; an exception in one tick is logged and the next tick still runs."""

    interval: float = 1.0

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.interval)
            try:
                self.tick(max(0.0, time.monotonic() - t0 - self.interval))
            except Exception:
                log.exception("%s failed", type(self).__name__)

    def tick(self, late: float) -> None:
        raise TypeError(f"{type(self).__name__} does not define tick()")
