"""Admission control: at most N generations run, at most M wait, none waits forever.

Ollama queues requests for a loaded model without limit, so llmserve bounds the work it sends.
A slot is taken before the upstream request is opened and released by the generation's
``aclose()``, whatever happened. Waiters are served first come, first served; a released slot
is handed straight to the oldest waiter.
"""

from __future__ import annotations

import asyncio
import collections
import math

from llmserve.errors import OverloadedError


class Admission:
    def __init__(self, max_running: int, max_queued: int, queue_timeout_s: float) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; raise ``OverloadedError`` (429) otherwise."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise OverloadedError(
                f"the server is busy: {self.running} generations running and "
                f"{len(self._waiters)} waiting (MAX_QUEUED_GENERATIONS)",
                retry_after=self._retry_after(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as the timer fired: give it back
            else:
                self._waiters.remove(waiter)
            raise OverloadedError(
                f"the server is busy: waited {self.queue_timeout_s:g} s for a free slot "
                "(QUEUE_TIMEOUT_S)",
                retry_after=self._retry_after(),
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter, or return it to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    def _retry_after(self) -> int:
        return max(1, math.ceil(min(self.queue_timeout_s, 5.0)))
