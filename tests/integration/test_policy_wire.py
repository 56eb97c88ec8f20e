"""The key policy's PostgreSQL connection, driven from the event loop with libpq's non-blocking
calls: what that shortcut assumes, each checked on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
from sqlalchemy import make_url, text

from llmserve.db.session import make_engine
from llmserve.services._policy_wire import PolicyWire
from llmserve.services.keys import KeyService, Principal
from llmserve.services.policy import KeyPolicy, PolicyService
from tests._silent_link import SilentLink


def run_bounded(work: Any, limit_s: float = 20.0) -> Any:
    """``asyncio.run(work())`` in a thread, failing (instead of hanging the run) if the loop
    is blocked for good."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"the event loop was still blocked after {limit_s} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_between_batches_the_connection_is_idle_in_autocommit_and_skips_the_disk_flush(
    keys: KeyService, db_url: str
) -> None:
    """A batch is one statement in its own transaction: nothing is left open on the held
    connection (another server's batch would wait on its row locks), and its commits do not
    wait for the disk."""
    policy = KeyPolicy(rpm=1000, concurrency=5)
    _, record = keys.create("wire", policy=policy, actor="test")
    principal = Principal(record.id, record.name, False, policy)
    engine = make_engine(db_url)

    async def work() -> tuple[str, bytes, str]:
        service = PolicyService(engine)
        await service.start()
        try:
            ticket = await service.admit(principal, "llama3.2")
            service.settle(ticket, 7)
            await service.flush()
            assert service._wire is not None
            pid = service._wire.raw.driver_connection.info.backend_pid
            setting = await service._pg(b"SHOW synchronous_commit", [])
            with engine.connect() as other:
                state = other.execute(
                    text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ).scalar_one()
                leases = other.execute(text("SELECT count(*) FROM key_leases")).scalar_one()
            return state, setting, f"{leases}"
        finally:
            await service.stop()

    try:
        state, setting, leases = run_bounded(work)
    finally:
        engine.dispose()
    assert state == "idle"  # not "idle in transaction"
    assert setting == b"off"
    assert leases == "0"  # the lease taken and given back, both committed


def test_a_statement_the_database_stops_reading_never_blocks_the_loop(db_url: str) -> None:
    """A database that falls silent while a large statement is being written (the socket's
    buffers fill up): libpq in non-blocking mode hands the rest over as the socket drains, so
    the loop keeps serving everything else meanwhile and the caller's timeout fires."""
    target = make_url(db_url)
    link = SilentLink(target.host or "127.0.0.1", target.port or 5432)
    relayed = target.set(host="127.0.0.1", port=link.port)
    engine = make_engine(relayed.render_as_string(hide_password=False))

    async def work() -> tuple[int, int]:
        wire = PolicyWire(engine.raw_connection())
        assert await wire.value(b"SELECT length($1)", [b"x" * 1000]) == b"1000"
        link.silence()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            async with asyncio.timeout(1.0):
                await wire.value(b"SELECT length($1)", [b"x" * 64_000_000])
        except TimeoutError:
            pass
        else:
            raise AssertionError("a silent database answered")
        finally:
            ticker.cancel()
        pending = wire._pg.flush()  # 1: part of the statement never left libpq's buffer
        wire.raw.invalidate()
        return ticks, pending

    try:
        ticks, pending = run_bounded(work)
    finally:
        link.close()
        engine.dispose()
    assert pending == 1, "the whole statement was written: the buffers never filled up"
    assert ticks >= 20, f"the loop ran only {ticks} times in the second it waited"


def test_database_errors_raise_psycopgs_class_for_their_sqlstate(db_url: str) -> None:
    """The policy retries deadlocks and serialization failures by their class, and treats the
    rest as an outage: the classes must be psycopg's own."""
    engine = make_engine(db_url)

    async def work() -> list[type[BaseException]]:
        wire = PolicyWire(engine.raw_connection())
        caught = []
        for statement in (b"SELECT 1/0", b"SELECT no_such_function()"):
            try:
                await wire.value(statement, [])
            except psycopg.Error as exc:
                caught.append(type(exc))
        assert await wire.value(b"SELECT 'still usable'", []) == b"still usable"
        wire.raw.invalidate()
        return caught

    try:
        caught = run_bounded(work)
    finally:
        engine.dispose()
    assert caught == [psycopg.errors.DivisionByZero, psycopg.errors.UndefinedFunction]
