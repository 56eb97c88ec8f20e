"""Cancel work when the HTTP client goes away before a (non-streamed) response is ready."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection; there is nobody to answer."""


async def cancel_on_disconnect(receive: Receive | Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientDisconnected.

    The work runs in the calling task (no task of its own, which is cheaper); a small watcher
    task cancels the caller when the disconnect arrives. Cancelling the work runs its
    ``finally`` blocks, which close the upstream request. If the caller is cancelled by someone
    else (e.g. at the end of the shutdown grace period), the work unwinds the same way and the
    cancellation propagates.
    """
    caller = asyncio.current_task()
    assert caller is not None
    if isinstance(receive, Request):
        receive = receive.receive
    disconnected = False

    async def watch_disconnect() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        caller.cancel()

    watcher = asyncio.ensure_future(watch_disconnect())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected and caller.uncancel() == 0:
            raise ClientDisconnected() from None
        raise
    finally:
        # Only reached with the caller running: the watcher cannot fire between the work's end
        # and this line, so a finished work is never cancelled afterwards.
        watcher.cancel()
