"""Admission control: bounded running and waiting, timeouts, FIFO hand-over, no leaked slots."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.errors import OverloadedError
from llmserve.services.admission import Admission


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_runs_up_to_the_limit_then_queues_then_refuses() -> None:
    admission = Admission(max_running=2, max_queued=1, queue_timeout_s=5)
    await admission.acquire()
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert (admission.running, admission.queued) == (2, 1)
    with pytest.raises(OverloadedError) as info:
        await admission.acquire()
    assert info.value.retry_after >= 1
    admission.release()
    await waiter  # the freed slot went to the waiter
    assert (admission.running, admission.queued) == (2, 0)
    admission.release()
    admission.release()
    assert admission.running == 0


@pytest.mark.anyio
async def test_waiting_too_long_is_overloaded_and_frees_the_place() -> None:
    admission = Admission(max_running=1, max_queued=4, queue_timeout_s=0.05)
    await admission.acquire()
    with pytest.raises(OverloadedError, match="QUEUE_TIMEOUT_S"):
        await admission.acquire()
    assert admission.queued == 0
    admission.release()
    assert admission.running == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    admission = Admission(max_running=1, max_queued=4, queue_timeout_s=5)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.queued == 0
    admission.release()
    assert admission.running == 0


@pytest.mark.anyio
async def test_waiters_are_served_in_order() -> None:
    admission = Admission(max_running=1, max_queued=10, queue_timeout_s=5)
    await admission.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await admission.acquire()
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    for _ in range(5):
        admission.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    admission.release()
    assert admission.running == 0
