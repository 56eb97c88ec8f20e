"""Key policy: per-key rate limits, token budgets, concurrency and allowed models, the same on
every replica and worker.

A key may carry (``llmserve keys create|update``): ``rpm`` requests and ``tpm`` tokens (prompt
plus completion) per calendar minute, ``concurrency`` generations at once, a token ``budget``
per calendar day, week or month (UTC), and the ``models`` it may use (names or globs). A key
without any of them costs nothing here: no database work at all.

The counters live in the database every replica shares, never in process memory:

* **admit** (before the generation, one short transaction): the budget period's row is read,
  the minute's row is upserted (``requests + 1``, returning the minute's requests and tokens)
  and, for a concurrency limit, a lease row is inserted while the key's row is locked and the
  key's live leases are counted. Any limit reached rolls the whole transaction back, so a
  refused request counts for nothing: ``--rpm 10`` admits exactly 10 requests in a minute,
  whichever replicas they reach (the upsert's row lock orders them). No lock outlives the
  transaction;
* **settle** (when the generation ends, cancelled ones included, which pay for what they
  produced): the tokens are added to the minute's and the period's rows and the lease is
  deleted, batched in the background;
* a lease **expires** unless its server renews it (every third of ``POLICY_LEASE_S``), so a
  crashed server's generations stop counting by themselves.

When the database is down, ``POLICY_FAIL_MODE`` decides: ``open`` (the default) serves the keys
the server knows without counting (charges wait in memory and are applied once it is back);
``closed`` refuses limited keys with 503 ``policy_unavailable``. Unknown keys are refused either
way (authentication needs the database for them). The mode is logged once per outage, and
``/ready`` names the policy check.

A process's own admits are serialised: one batch at a time. On PostgreSQL a batch is a single
call of the ``llmserve_policy_batch`` function (migration 0005), which does the counting inside
the database, sent from the event loop on one held connection with libpq's non-blocking calls
(:mod:`llmserve.services._policy_wire`): one round trip per batch, no thread hand-over. SQLite
(one process) runs the same rules a statement at a time on the driver's own cursor, in one
worker thread. The ORM's per-statement cost would be most of the policy's CPU either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import orjson
import psycopg
from sqlalchemy import Engine

from llmserve import errors, names
from llmserve.services._policy_wire import PolicyWire

if TYPE_CHECKING:
    from llmserve.metrics import Metrics
    from llmserve.services.keys import Principal

log = logging.getLogger(__name__)

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")
FailMode = Literal["open", "closed"]
_BUDGET = re.compile(r"(\d+)\s*/\s*(day|week|month)\Z")
_DB_ERRORS = (psycopg.Error, sqlite3.Error)


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A key's limits; None: no limit. ``models`` empty: every model."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget: int | None = None
    budget_period: Period | None = None
    models: tuple[str, ...] = ()

    @property
    def counted(self) -> bool:
        """Whether any limit needs the database."""
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency, self.budget))

    def allows(self, model: str) -> bool:
        return not self.models or _allowed(self.models, model)

    def describe(self) -> str:
        """``rpm 10, tpm 5000, budget 2000000/month, models llama3*`` (or ``no limits``)."""
        parts = [
            f"{name} {value}"
            for name, value in (
                ("rpm", self.rpm),
                ("tpm", self.tpm),
                ("concurrency", self.concurrency),
            )
            if value is not None
        ]
        if self.budget is not None:
            parts.append(f"budget {self.budget}/{self.budget_period}")
        if self.models:
            parts.append("models " + ",".join(self.models))
        return ", ".join(parts) or "no limits"


def visible_to(principal: Principal | None, model: str) -> bool:
    """Whether ``model`` shows in the model lists ``principal`` reads (its allowed models)."""
    policy = principal.policy if principal is not None else None
    return policy is None or policy.allows(model)


@functools.lru_cache(maxsize=4096)
def _allowed(patterns: tuple[str, ...], model: str) -> bool:
    """Whether one of ``patterns`` matches ``model`` (asked on every request of a key with a
    models list: remembered)."""
    return any(model_matches(pattern, model) for pattern in patterns)


def model_matches(pattern: str, model: str) -> bool:
    """``pattern`` (a name, or a glob such as ``llama3*``) matches ``model``, ignoring case;
    ``llama3.2`` means ``llama3.2:latest`` as everywhere else."""
    if not any(char in pattern for char in "*?["):
        return names.same_model(pattern, model)
    candidates = {model.lower()}
    try:
        parsed = names.parse(model)
    except errors.InvalidModelNameError:
        pass
    else:
        candidates.add(parsed.display.lower())
        if parsed.tag.lower() == names.DEFAULT_TAG:
            candidates.add(parsed.display.lower().removesuffix(":" + names.DEFAULT_TAG))
    return any(fnmatch.fnmatchcase(candidate, pattern.lower()) for candidate in candidates)


def parse_budget(text: str) -> tuple[int, Period]:
    """``2000000/month`` → ``(2000000, "month")``."""
    match = _BUDGET.match(text.strip().lower())
    if match is None or int(match.group(1)) <= 0:
        raise errors.InvalidRequestError(
            f"invalid budget {text!r}: tokens per day, week or month, e.g. 2000000/month"
        )
    return int(match.group(1)), match.group(2)  # type: ignore[return-value]  # _BUDGET: a Period


def parse_models(text: str) -> tuple[str, ...]:
    """``llama3*, qwen2.5:0.5b`` → the patterns; an empty text means every model."""
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    for pattern in patterns:
        if len(pattern) > 200 or any(char.isspace() for char in pattern):
            raise errors.InvalidRequestError(f"invalid model pattern {pattern!r}")
    return patterns


def span_start(span: str, now: datetime) -> datetime:
    """The start of the calendar ``span`` (``minute``, ``day``, ``week``, ``month``, UTC)."""
    if span == "minute":
        return now.replace(second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if span == "day":
        return day
    if span == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def span_end(span: str, start: datetime) -> datetime:
    if span == "minute":
        return start + timedelta(minutes=1)
    if span == "day":
        return start + timedelta(days=1)
    if span == "week":
        return start + timedelta(weeks=1)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(slots=True)
class Ticket:
    """An admitted request: what to charge when it ends and the lease to give back."""

    key_id: int
    policy: KeyPolicy
    lease: str | None = None
    settled: bool = False


@dataclass(slots=True)
class _Admit:
    """A request waiting for the next batch: its key, policy, time and answer."""

    key_id: int
    policy: KeyPolicy
    now: datetime
    future: asyncio.Future[Ticket | errors.RateLimitedError]


@dataclass(slots=True)
class _Pending:
    """Charges and releases waiting for the next batch (kept through an outage)."""

    tokens: dict[tuple[int, str, datetime], int] = field(default_factory=dict)
    releases: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tokens or self.releases)


#: Rows older than this are deleted now and then (minutes only: periods are few and are read).
_MINUTES_KEPT = timedelta(hours=2)
_PRUNE_EVERY_S = 600.0
_MAX_PENDING = 100_000
#: During an outage, requests go straight to POLICY_FAIL_MODE; the database is tried again
#: this often (so a dead database costs one connection attempt a second, not one per request).
_RETRY_S = 1.0
#: A database that has not answered a batch (connecting included) in this long is down too: a
#: partition refuses nothing, it only stays silent, and a request must not wait for it
#: (POLICY_FAIL_MODE decides). An admit that arrives while a batch is out waits for that one
#: and its own: at most twice this.
_ANSWER_S = 2.0
#: Charges and releases ride on the next batch of admits; with none coming, they are written
#: after this long. A lease given back is free at once for this server's next admit (the release
#: is in the same batch); another server sees it at most this much later.
_SETTLE_S = 0.2
#: How long a budget period's spent tokens, once read, are trusted.
_BUDGET_READ_S = 1.0


class PolicyService:
    """Admits and settles requests of keys with limits (see the module doc).

    Work is batched: the requests that arrive while the previous batch is in the database go
    into the next one, which is one transaction for all of them (per key: one budget read, one
    upsert of ``requests + k``, the leases) plus every pending charge and release. Under load a
    batch holds many requests, so the per-request cost falls; one request alone is one
    transaction. Keys are handled in id order, so two servers lock rows in the same order.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        fail_mode: FailMode = "open",
        lease_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._fail_mode = fail_mode
        self._lease_s = lease_s
        self._metrics = metrics
        self._clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmserve-policy")
        self._connection: Any = None  # SQLite: the driver's connection, used only in that thread
        self._wire: PolicyWire | None = None  # PostgreSQL: used only from the event loop
        self._wire_lock = asyncio.Lock()  # one statement at a time on it (batches, renewals)
        self._sql = _Sql()  # SQLite's statements
        self._admits: list[_Admit] = []
        self._pending = _Pending()
        self._live: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        self._settle_due = False  # the pending charges are written even with no admit
        self._renewer: asyncio.Task[None] | None = None
        self._outage = False
        self._retry_at = 0.0  # during an outage, when to try the database again
        #: (key, period, start) → (tokens spent, when read): see ``_spent``.
        self._spent_seen: dict[tuple[int, str, datetime], tuple[int, float]] = {}
        self._pruned = time.monotonic()

    @property
    def fail_mode(self) -> FailMode:
        return self._fail_mode

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_leases(), name="policy-leases")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        self._pending.releases.extend(self._live)
        self._live.clear()
        with contextlib.suppress(Exception):
            await self.flush()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        self._drop_wire()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    def check(self, *, database_up: bool) -> str:
        """The policy's line for ``/ready``: what the keys' limits do while the database is
        down (POLICY_FAIL_MODE)."""
        if database_up:
            return "ok"
        if self._fail_mode == "open":
            return "degraded: database unavailable, serving known keys without limits (open)"
        return "unavailable: database unavailable, refusing limited keys (closed)"

    # -- admit and settle -------------------------------------------------------------------

    async def admit(self, principal: Principal | None, model: str) -> Ticket | None:
        """Let a request of ``principal`` on ``model`` run, or raise: ``ModelNotAllowedError``
        (403), ``RateLimitedError`` (429), ``PolicyUnavailableError`` (503, fail closed)."""
        policy = principal.policy if principal is not None else None
        if policy is None:
            return None
        assert principal is not None
        if not policy.allows(model):
            self._rejected("model")
            raise errors.ModelNotAllowedError(
                f"the API key '{principal.name}' may not use model '{model}' "
                f"(allowed: {', '.join(policy.models)})"
            )
        if not policy.counted:
            return None
        if self._outage and time.monotonic() < self._retry_at:  # not yet: no wait per request
            return self._unavailable(principal.key_id, policy, None)
        future: asyncio.Future[Ticket | errors.RateLimitedError]
        future = asyncio.get_running_loop().create_future()
        self._admits.append(_Admit(principal.key_id, policy, self._clock(), future))
        self._kick()
        try:  # the batch answers within _ANSWER_S, or fails every admit in it
            outcome = await future
        except _DB_ERRORS as exc:
            return self._unavailable(principal.key_id, policy, exc)
        if isinstance(outcome, errors.RateLimitedError):
            self._rejected(outcome.reason)
            raise outcome
        return outcome

    def settle(self, ticket: Ticket | None, tokens: int) -> None:
        """The request ended having used ``tokens``: charge them, give the lease back. Never
        waits (the next batch writes it); idempotent."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        policy, now = ticket.policy, self._clock()
        pending = self._pending
        if tokens > 0 and len(pending.tokens) < _MAX_PENDING:
            spans = []
            if policy.tpm is not None or policy.rpm is not None:
                spans.append("minute")
            if policy.budget is not None and policy.budget_period is not None:
                spans.append(policy.budget_period)
            for span in spans:
                slot = (ticket.key_id, span, span_start(span, now))
                pending.tokens[slot] = pending.tokens.get(slot, 0) + tokens
        if ticket.lease is not None:
            self._live.discard(ticket.lease)
            pending.releases.append(ticket.lease)
        if pending and self._settle_timer is None:
            loop = asyncio.get_running_loop()
            self._settle_timer = loop.call_later(_SETTLE_S, self._settle_now)

    def _settle_now(self) -> None:
        self._settle_timer = None
        if self._pending:
            self._settle_due = True
            self._kick()

    async def flush(self) -> None:
        """Write every pending charge and release now (tests, shutdown)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)
        if self._pending:
            self._settle_due = True
            self._kick()
            await asyncio.shield(self._worker)  # type: ignore[arg-type]  # _kick() has just set it

    def _kick(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())

    async def _work(self) -> None:
        """Run batches until nothing waits: what arrives meanwhile goes into the next one."""
        loop = asyncio.get_running_loop()
        while self._admits or (self._settle_due and self._pending and not self._outage):
            # Not those that stopped waiting (timed out, or the client left): they are decided.
            admits = [admit for admit in self._admits if not admit.future.done()]
            self._admits = []
            pending, self._pending = self._pending, _Pending()
            self._settle_due = False
            try:
                if self._sqlite:
                    outcomes = await loop.run_in_executor(
                        self._executor, self._batch_sqlite, admits, pending
                    )
                else:
                    outcomes = await self._batch_pg(admits, pending)
            except _DB_ERRORS as exc:
                self._down(exc)
                self._keep(pending)  # applied once the database is back
                for admit in admits:
                    if not admit.future.done():
                        admit.future.set_exception(exc)
                continue
            except BaseException as exc:  # a bug: every waiter hears of it
                for admit in admits:
                    if not admit.future.done():
                        admit.future.set_exception(exc)
                raise
            self._back()
            for admit, outcome in zip(admits, outcomes, strict=True):
                if isinstance(outcome, Ticket) and outcome.lease is not None:
                    self._live.add(outcome.lease)
                if not admit.future.done():
                    admit.future.set_result(outcome)
                elif isinstance(outcome, Ticket):  # the client left while it was admitted
                    self.settle(outcome, 0)

    def _keep(self, pending: _Pending) -> None:
        for slot, tokens in pending.tokens.items():
            if slot in self._pending.tokens or len(self._pending.tokens) < _MAX_PENDING:
                self._pending.tokens[slot] = self._pending.tokens.get(slot, 0) + tokens
        self._pending.releases.extend(pending.releases)

    # -- outages ----------------------------------------------------------------------------

    def _unavailable(
        self, key_id: int, policy: KeyPolicy, exc: BaseException | None
    ) -> Ticket | None:
        if exc is not None:
            self._down(exc)
        if self._fail_mode == "closed":
            self._rejected("unavailable")
            raise errors.PolicyUnavailableError(
                "the database that counts this key's limits is unavailable "
                "(POLICY_FAIL_MODE=closed)"
            )
        return Ticket(key_id, policy)  # charged once the database is back

    def _down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + _RETRY_S
        if not self._outage:
            self._outage = True
            if self._fail_mode == "open":
                log.warning(
                    "key policy: the database is unavailable (%s); POLICY_FAIL_MODE=open: "
                    "serving known keys without counting their limits until it is back",
                    exc.__class__.__name__,
                )
            else:
                log.error(
                    "key policy: the database is unavailable (%s); POLICY_FAIL_MODE=closed: "
                    "refusing keys with limits (503) until it is back",
                    exc.__class__.__name__,
                )

    def _back(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("key policy: the database is back; limits are counted again")

    def _rejected(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.policy_rejected(reason)

    # -- PostgreSQL: one statement per batch, from the event loop ---------------------------

    async def _pg(self, statement: bytes, params: list[bytes | None]) -> Any:
        """``statement`` on the held connection, one at a time, answered within ``_ANSWER_S``
        (connecting included): a database that has not answered by then is down, like one
        that refuses (a partition refuses nothing, it only stays silent)."""
        async with self._wire_lock:
            try:
                async with asyncio.timeout(_ANSWER_S):
                    return await self._attempts(statement, params)
            except TimeoutError:
                raise psycopg.OperationalError(
                    f"no answer from the database in {_ANSWER_S:g} s"
                ) from None

    async def _attempts(self, statement: bytes, params: list[bytes | None]) -> Any:
        """A statement PostgreSQL chose to abort (a deadlock with another server, a
        serialization failure) is run again, up to three times: it is contention, not an
        outage. Any other failure (a timeout's cancellation too) drops the connection: its
        state is unknown."""
        for attempt in range(3):
            wire = self._wire or await self._connect()
            try:
                return await wire.value(statement, params)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == 2:
                    raise
            except BaseException:
                self._drop_wire()
                raise
        raise AssertionError("unreachable")

    async def _connect(self) -> PolicyWire:
        """A connection from the engine's pool, taken in the policy thread (connecting
        blocks). Given up on (a timeout), it is closed when it arrives."""
        loop = asyncio.get_running_loop()
        taking = loop.run_in_executor(self._executor, self._take_connection)
        try:
            raw = await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(_close_unused)
            raise
        self._wire = PolicyWire(raw)
        return self._wire

    def _take_connection(self) -> Any:
        """The policy's own connection, in autocommit and without waiting for the disk at
        commit (``synchronous_commit off``): counters and leases are not worth a disk flush per
        batch, which cost more than the rest of the batch together. If PostgreSQL itself
        crashes, the last fraction of a second of counts may be lost (at most three times
        ``wal_writer_delay``, 0.6 s by default), never part of a batch. The setting stays on
        this connection, which never goes back to the pool (:meth:`_drop_wire`)."""
        raw = self._engine.raw_connection()
        try:
            driver: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
            driver.autocommit = True
            driver.execute("SET synchronous_commit TO off")
        except BaseException:
            raw.invalidate()
            raise
        return raw

    def _drop_wire(self) -> None:
        """Close the connection for good (never back to the pool: see _take_connection)."""
        wire, self._wire = self._wire, None
        if wire is not None:
            with contextlib.suppress(Exception):
                wire.raw.invalidate()

    async def _batch_pg(
        self, admits: list[_Admit], pending: _Pending
    ) -> list[Ticket | errors.RateLimitedError]:
        """One call of ``llmserve_policy_batch`` (migration 0005), in autocommit: the releases
        (a lease given back a moment ago is free for this batch), then key by key in id order
        its charges and its admits, each key's usage rows in (span, start) order, so that two
        servers take row locks in the same order. Each refusal's own counting is undone in the
        same transaction."""
        by_key, charges, prune = self._plan(admits, pending)
        keys: list[dict[str, Any]] = []
        groups: list[tuple[list[int], list[str]]] = []
        for key_id in sorted(by_key.keys() | charges.keys()):
            rows = sorted(charges.get(key_id, ()))
            indexes = by_key.get(key_id, [])
            if not indexes:
                keys.append({"k": key_id, "n": 0, "early": _charges(rows), "late": []})
                continue
            group = [admits[i] for i in indexes]
            policy, now = group[-1].policy, group[-1].now
            own = ("minute", span_start("minute", now))  # the admits' row
            leases = _new_leases(policy, len(group))
            groups.append((indexes, leases))
            keys.append(
                {
                    "k": key_id,
                    "n": len(group),
                    "early": _charges([row for row in rows if row[:2] <= own]),
                    "late": _charges([row for row in rows if row[:2] > own]),
                    "minute": own[1].isoformat(),
                    "now": now.isoformat(),
                    "expires": (now + timedelta(seconds=self._lease_s)).isoformat(),
                    "leases": leases,
                    "rpm": policy.rpm,
                    "tpm": policy.tpm,
                    "concurrency": policy.concurrency,
                    "budget": policy.budget,
                    "period": policy.budget_period,
                    "period_start": (
                        span_start(policy.budget_period, now).isoformat()
                        if policy.budget_period is not None
                        else None
                    ),
                }
            )
        payload: dict[str, Any] = {"releases": pending.releases, "keys": keys, "prune": None}
        if prune:
            now = self._clock()
            payload["prune"] = {
                "minutes": (now - _MINUTES_KEPT).isoformat(),
                "leases": (now - timedelta(seconds=self._lease_s)).isoformat(),
            }
        answers = orjson.loads(await self._pg(_BATCH, [orjson.dumps(payload)]))
        outcomes: list[Ticket | errors.RateLimitedError | None] = [None] * len(admits)
        for (indexes, leases), answer in zip(groups, answers, strict=True):
            group = [admits[i] for i in indexes]
            for i, outcome in zip(indexes, _outcomes(group, answer, leases), strict=True):
                outcomes[i] = outcome
        return outcomes  # type: ignore[return-value]  # every admit is in exactly one group

    def _plan(
        self, admits: list[_Admit], pending: _Pending
    ) -> tuple[dict[int, list[int]], dict[int, list[tuple[str, datetime, int]]], bool]:
        """A batch's admits by key (their indexes), its charges by key, and whether old rows
        are pruned this time."""
        by_key: dict[int, list[int]] = {}
        for index, admit in enumerate(admits):
            by_key.setdefault(admit.key_id, []).append(index)
        charges: dict[int, list[tuple[str, datetime, int]]] = {}
        for (key_id, span, start), tokens in pending.tokens.items():
            charges.setdefault(key_id, []).append((span, start, tokens))
        prune = time.monotonic() - self._pruned > _PRUNE_EVERY_S
        if prune:
            self._pruned = time.monotonic()
        return by_key, charges, prune

    # -- SQLite: a statement at a time, in the policy thread --------------------------------

    def _run(self, work: Callable[[Any], Any]) -> Any:
        """``work(cursor)`` in one transaction on the held connection: committed, or rolled
        back (and the connection dropped after a database error)."""
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        cursor = self._connection.cursor()
        try:
            result = work(cursor)
            self._connection.commit()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._connection.rollback()
            if isinstance(exc, _DB_ERRORS):
                self._drop()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        return result

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _batch_sqlite(
        self, admits: list[_Admit], pending: _Pending
    ) -> list[Ticket | errors.RateLimitedError]:
        """The batch of :meth:`_batch_pg` in one transaction, by the same rules in the same
        order (:meth:`_statements`)."""
        by_key, charges, prune = self._plan(admits, pending)
        outcomes: list[Ticket | errors.RateLimitedError] = self._run(
            lambda c: self._statements(c, admits, pending.releases, by_key, charges, prune)
        )
        return outcomes

    def _statements(
        self,
        cursor: Any,
        admits: list[_Admit],
        releases: list[str],
        by_key: dict[int, list[int]],
        charges: dict[int, list[tuple[str, datetime, int]]],
        prune: bool,
    ) -> list[Ticket | errors.RateLimitedError]:
        """The batch on SQLite, a statement at a time, in the order the function follows."""
        sql, t = self._sql, self._sql.time
        outcomes: list[Ticket | errors.RateLimitedError | None] = [None] * len(admits)

        def charge(key_id: int, rows: list[tuple[str, datetime, int]]) -> None:
            if rows:  # one statement for the key's rows, in their order
                values = [
                    v for span, start, tokens in rows for v in (key_id, span, t(start), tokens)
                ]
                cursor.execute(sql.charges(len(rows)), values)

        if releases:
            cursor.executemany(sql.release, [(lease,) for lease in releases])
        for key_id in sorted(by_key.keys() | charges.keys()):
            rows = sorted(charges.get(key_id, ()))
            indexes = by_key.get(key_id, [])
            if not indexes:
                charge(key_id, rows)
                continue
            group = [admits[i] for i in indexes]
            own = ("minute", span_start("minute", group[-1].now))
            charge(key_id, [row for row in rows if row[:2] <= own])
            for i, outcome in zip(indexes, self._admit_key(cursor, group), strict=True):
                outcomes[i] = outcome
            charge(key_id, [row for row in rows if row[:2] > own])
        if prune:
            now = self._clock()
            cursor.execute(sql.prune_minutes, (t(now - _MINUTES_KEPT),))
            cursor.execute(sql.prune_leases, (t(now - timedelta(seconds=self._lease_s)),))
        return outcomes  # type: ignore[return-value]  # every admit is in exactly one group

    def _admit_key(
        self, cursor: Any, group: list[_Admit]
    ) -> list[Ticket | errors.RateLimitedError]:
        """The admits of one key on SQLite, in arrival order (its newest policy applies to
        all): the numbers ``llmserve_policy_batch`` answers on PostgreSQL, by the same rules."""
        sql, t = self._sql, self._sql.time
        key_id, policy, now = group[0].key_id, group[-1].policy, group[-1].now
        n, minute = len(group), span_start("minute", now)
        answer = {"spent": 0, "total": 0, "tokens": 0, "live": 0, "granted": 0}
        leases = _new_leases(policy, n)
        wanted = n
        if policy.budget is not None and policy.budget_period is not None:
            start = span_start(policy.budget_period, now)
            answer["spent"] = self._spent(cursor, key_id, policy.budget_period, start)
            if answer["spent"] >= policy.budget:
                wanted = 0
        if wanted and (policy.rpm is not None or policy.tpm is not None):
            cursor.execute(sql.count_requests, (key_id, "minute", t(minute), n, n))
            answer["total"], answer["tokens"] = (int(value) for value in cursor.fetchone())
            if policy.tpm is not None and answer["tokens"] >= policy.tpm:
                wanted = 0
            elif policy.rpm is not None:
                wanted = max(0, min(n, policy.rpm - (answer["total"] - n)))
        granted = wanted
        if wanted and policy.concurrency is not None:
            cursor.execute(sql.count_leases, (key_id, t(now)))  # live ones: expired don't count
            answer["live"] = int(cursor.fetchone()[0])
            granted = max(0, min(wanted, policy.concurrency - answer["live"]))
            expires = t(now + timedelta(seconds=self._lease_s))
            cursor.executemany(
                sql.add_lease, [(lease, key_id, expires) for lease in leases[:granted]]
            )
        if answer["total"] and granted < n:  # a refused request counts for nothing
            cursor.execute(sql.uncount_requests, (n - granted, key_id, "minute", t(minute)))
        answer["granted"] = granted
        return _outcomes(group, answer, leases)

    def _spent(self, cursor: Any, key_id: int, period: str, start: datetime) -> int:
        """The tokens a key has used in its budget period, read at most once a second per key
        (a budget is checked against charges that land when generations end anyway; a second
        more of lag saves a statement per batch)."""
        slot = (key_id, period, start)
        seen = self._spent_seen.get(slot)
        if seen is not None and time.monotonic() - seen[1] < _BUDGET_READ_S:
            return seen[0]
        cursor.execute(self._sql.read, (key_id, period, self._sql.time(start)))
        row = cursor.fetchone()
        spent = int(row[0]) if row is not None else 0
        if len(self._spent_seen) > _MAX_PENDING:
            self._spent_seen.clear()
        self._spent_seen[slot] = (spent, time.monotonic())
        return spent

    def _renew_sync(self, leases: list[str]) -> None:
        expires = self._sql.time(self._clock() + timedelta(seconds=self._lease_s))
        self._run(lambda c: c.executemany(self._sql.renew, [(expires, x) for x in leases]))

    async def _renew(self, leases: list[str]) -> None:
        if self._sqlite:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._renew_sync, leases)
            return
        expires = self._clock() + timedelta(seconds=self._lease_s)
        # Lease ids are hex (secrets.token_hex): a text array literal needs no quoting.
        ids = ("{" + ",".join(leases) + "}").encode()
        await self._pg(_RENEW, [expires.isoformat().encode(), ids])

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            leases = sorted(self._live)
            if not leases:
                continue
            try:
                await self._renew(leases)
            except _DB_ERRORS as exc:
                self._down(exc)
            else:
                self._back()


#: The statements the event loop sends (``$n`` parameters, text format).
_BATCH = b"SELECT llmserve_policy_batch($1::jsonb)"
_RENEW = b"UPDATE key_leases SET expires_at = $1::timestamptz WHERE id = ANY($2::text[])"


def _close_unused(taking: asyncio.Future[Any]) -> None:
    if not taking.cancelled() and taking.exception() is None:
        with contextlib.suppress(Exception):
            taking.result().invalidate()


def _charges(rows: list[tuple[str, datetime, int]]) -> list[list[Any]]:
    return [[span, start.isoformat(), tokens] for span, start, tokens in rows]


def _new_leases(policy: KeyPolicy, n: int) -> list[str]:
    """Ids for the leases ``n`` admits may take (the first admitted take them in order)."""
    return [secrets.token_hex(16) for _ in range(n)] if policy.concurrency is not None else []


def _outcomes(
    group: list[_Admit], answer: dict[str, int], leases: list[str]
) -> list[Ticket | errors.RateLimitedError]:
    """Each admit's ticket or refusal, from what the database counted for the key's group:
    ``spent`` (the budget period's tokens), ``total`` (the minute's requests, this group's
    included), ``tokens`` (the minute's), ``live`` (leases running before the group) and
    ``granted`` (how many of the group, in arrival order, were admitted). The reasons and the
    ``x-ratelimit-*`` headers follow from the same numbers by the rules that counted them."""
    key_id, policy, now = group[0].key_id, group[-1].policy, group[-1].now
    n = len(group)
    if answer["granted"] == n:  # the common case: no refusal, so no headers to work out
        return [Ticket(key_id, policy, leases[i] if leases else None) for i in range(n)]
    budget, period = policy.budget, policy.budget_period
    if budget is not None and period is not None and answer["spent"] >= budget:
        start = span_start(period, now)
        refusal = _limited(
            "budget",
            f"the key's budget of {budget} tokens per {period} is spent",
            span_end(period, start),
            now,
            {},
        )
        return [refusal] * n
    out: list[Ticket | errors.RateLimitedError | None] = [None] * n
    headers: dict[str, str] = {}
    if policy.rpm is not None or policy.tpm is not None:
        minute = span_start("minute", now)
        before, tokens, reset = answer["total"] - n, answer["tokens"], span_end("minute", minute)
        for i in range(n):
            own: dict[str, str] = {}
            position = before + i + 1
            if policy.rpm is not None:
                _headers(own, "requests", policy.rpm, policy.rpm - position, reset, now)
            if policy.tpm is not None:
                _headers(own, "tokens", policy.tpm, policy.tpm - tokens, reset, now)
            if policy.rpm is not None and position > policy.rpm:
                own["x-ratelimit-remaining-requests"] = "0"
                out[i] = _limited("rpm", f"over {policy.rpm} requests per minute", reset, now, own)
            elif policy.tpm is not None and tokens >= policy.tpm:
                out[i] = _limited("tpm", f"over {policy.tpm} tokens per minute", reset, now, own)
            else:
                headers = own
    wanted = [i for i in range(n) if out[i] is None]
    for rank, i in enumerate(wanted):
        if rank < answer["granted"]:
            out[i] = Ticket(key_id, policy, leases[rank] if leases else None)
        else:
            out[i] = _limited(
                "concurrency",
                f"{policy.concurrency} generations of this key are running already",
                now + timedelta(seconds=1),
                now,
                headers,
            )
    return out  # type: ignore[return-value]  # every index is set above


def _headers(
    headers: dict[str, str], what: str, limit: int, remaining: int, reset: datetime, now: datetime
) -> None:
    headers[f"x-ratelimit-limit-{what}"] = str(limit)
    headers[f"x-ratelimit-remaining-{what}"] = str(max(0, remaining))
    headers[f"x-ratelimit-reset-{what}"] = f"{max(0.0, (reset - now).total_seconds()):.0f}s"


def _limited(
    reason: str, detail: str, reset: datetime, now: datetime, headers: dict[str, str]
) -> errors.RateLimitedError:
    wait = max(1, int((reset - now).total_seconds() + 0.999))
    return errors.RateLimitedError(
        f"rate limited: {detail}; try again in {wait} s",
        reason=reason,
        retry_after=wait,
        headers=dict(headers),
    )


class _Sql:
    """The policy's statements on SQLite, for the driver's cursor (``?`` parameters).

    Times are passed as the text SQLAlchemy stores there (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``),
    so the ORM reads the same rows.
    """

    count_requests = (
        "INSERT INTO key_usage (key_id, span, starts_at, requests, tokens) VALUES (?, ?, ?, ?, 0) "
        "ON CONFLICT (key_id, span, starts_at) DO UPDATE "
        "SET requests = key_usage.requests + ? RETURNING requests, tokens"
    )
    uncount_requests = (
        "UPDATE key_usage SET requests = requests - ? "
        "WHERE key_id = ? AND span = ? AND starts_at = ?"
    )
    read = "SELECT tokens FROM key_usage WHERE key_id = ? AND span = ? AND starts_at = ?"
    add_lease = "INSERT INTO key_leases (id, key_id, expires_at) VALUES (?, ?, ?)"
    count_leases = "SELECT count(*) FROM key_leases WHERE key_id = ? AND expires_at >= ?"
    release = "DELETE FROM key_leases WHERE id = ?"
    renew = "UPDATE key_leases SET expires_at = ? WHERE id = ?"
    prune_minutes = "DELETE FROM key_usage WHERE span = 'minute' AND starts_at < ?"
    prune_leases = "DELETE FROM key_leases WHERE expires_at < ?"

    @staticmethod
    @functools.cache
    def charges(rows: int) -> str:
        """Add tokens to ``rows`` usage rows: parameters ``key_id, span, starts_at, tokens``
        per row."""
        return (
            "INSERT INTO key_usage (key_id, span, starts_at, requests, tokens) VALUES "
            + ", ".join(["(?, ?, ?, 0, ?)"] * rows)
            + " ON CONFLICT (key_id, span, starts_at) DO UPDATE "
            "SET tokens = key_usage.tokens + excluded.tokens"
        )

    @staticmethod
    def time(value: datetime) -> str:
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
