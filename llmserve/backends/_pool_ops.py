"""One progress stream out of several: the same pull (or create) running on every server.

The servers' progress objects are passed on as they come, with a layer's ``total`` and
``completed`` summed over the servers (so one progress bar per layer covers them all), and each
server's own ``success`` held back: the caller says ``success`` once, when every server is done.
A server that fails does not stop the others; at the end, the failure is raised: as it came when
every server failed (a model the registry lacks is then still a 404), else as a ``BackendError``
that names the servers where it failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmserve import errors
from llmserve.domain import PullProgress

_DONE = object()


async def fan_in(
    name: str, streams: list[tuple[str, AsyncIterator[PullProgress]]]
) -> AsyncIterator[PullProgress]:
    """The merged progress of ``streams`` (``(server URL, progress)`` pairs), without
    ``success``; raises when any of them failed (see the module doc)."""
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def pump(url: str, stream: AsyncIterator[PullProgress]) -> None:
        try:
            async for item in stream:
                await queue.put((url, item))
            await queue.put((url, _DONE))
        except Exception as exc:  # noqa: BLE001 - reported by the consumer, below
            await queue.put((url, exc))

    tasks = [asyncio.create_task(pump(url, stream)) for url, stream in streams]
    layers: dict[str, dict[str, tuple[int, int]]] = {}  # digest -> url -> (total, completed)
    failures: list[tuple[str, Exception]] = []
    pending = len(tasks)
    try:
        while pending:
            url, item = await queue.get()
            if item is _DONE or isinstance(item, Exception):
                pending -= 1
                if isinstance(item, Exception):
                    failures.append((url, item))
                continue
            assert isinstance(item, PullProgress)
            if item.status == "success":
                continue
            if item.digest and item.total:
                layer = layers.setdefault(item.digest, {})
                layer[url] = (item.total, item.completed or 0)
                item = PullProgress(
                    status=item.status,
                    digest=item.digest,
                    total=sum(total for total, _ in layer.values()),
                    completed=sum(done for _, done in layer.values()),
                )
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if not failures:
        return
    first = failures[0][1]
    if len(failures) == len(streams) and isinstance(first, errors.LlmserveError):
        raise first
    where = "; ".join(f"{url}: {getattr(exc, 'detail', exc)}" for url, exc in failures)
    raise errors.BackendError(f"'{name}' failed on {where}")
