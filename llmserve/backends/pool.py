"""Several backend servers behind one :class:`~llmserve.backends.base.Backend`.

Built by the factory only when ``OLLAMA_BASE_URL`` / ``OPENAI_BASE_URL`` lists more than one
server; every face (native, OpenAI, Ollama, CLI) then goes through it unchanged.

Routing (generations and embeddings): the candidates are the servers in rotation that have the
model (their model lists are refreshed in the background, and at once on a miss); the one with
the fewest generations in flight first, then one that has the model loaded (``/api/ps``), ties
taken in turn. A server runs at most ``per_server`` (MAX_CONCURRENT_GENERATIONS) at once; when
every candidate is full the request waits for room, as long as QUEUE_TIMEOUT_S.

Failover happens before the first byte only: a server that refuses, resets or fails before its
first output, or answers 503 busy, is skipped and the next candidate tried (each server once).
Once output has started a failure is the stream's error, never a retry that would repeat text.
Health: ``_servers.py`` (a circuit breaker with backoff) and the watchers here, one per server,
which probe cheaply (``/api/version``, ``/api/tags``, ``/api/ps``; ``/v1/models``).

Model operations: lists are merged, each model carrying the servers that have it
(``ModelInfo.backends``); pull, create and copy act on every server in rotation, delete and warm
on those that have the model (``ModelService`` names one server with ``server(url)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import httpx

from llmserve import errors
from llmserve.backends._pool_ops import fan_in
from llmserve.backends._routed import RoutedStream
from llmserve.backends._servers import BackendServer, check, model_key, probe
from llmserve.backends.base import Backend, GenerationStream
from llmserve.domain import (
    Embeddings,
    GenerationRequest,
    GenerationResult,
    ModelCard,
    ModelInfo,
    PullProgress,
    RunningModel,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class BackendPool:
    """Routes to, watches and manages several servers of one engine type."""

    def __init__(
        self,
        members: list[tuple[str, Backend]],
        *,
        per_server: int,
        queue_timeout_s: float,
        health_interval_s: float,
        probe_timeout_s: float,
        clients: list[httpx.AsyncClient] | None = None,
    ) -> None:
        if len(members) < 2:
            raise ValueError("a pool needs at least two servers")
        self.servers = [
            BackendServer(index, url, backend, health_interval_s)
            for index, (url, backend) in enumerate(members)
        ]
        self.name = members[0][1].name
        self.per_server = per_server
        self.max_concurrency: int | None = per_server * len(members)
        self._queue_timeout_s = queue_timeout_s
        self._interval_s = health_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._clients = clients or []
        self._turn = 0
        self._room: list[asyncio.Future[None]] = []
        self._refreshing: asyncio.Future[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def built_in_model(self) -> str:
        failure: errors.LlmserveError | None = None
        for server in self.servers:
            try:
                return server.backend.built_in_model
            except errors.LlmserveError as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    async def start(self) -> None:
        """Start every member, probe them all once, then watch each in the background."""
        for server in self.servers:
            with contextlib.suppress(errors.LlmserveError):
                await server.backend.start()
        await asyncio.gather(*(self._probe(server) for server in self.servers))
        self.built_in_model  # noqa: B018 - raises when no server could name it
        self._watchers = [
            asyncio.create_task(self._watch(server), name=f"watch {server.url}")
            for server in self.servers
        ]

    async def aclose(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for server in self.servers:
            await server.backend.aclose()
        for client in self._clients:
            await client.aclose()

    def server(self, url: str) -> BackendServer | None:
        """The configured server ``url`` names (a trailing ``/`` ignored)."""
        wanted = url.strip().rstrip("/")
        return next((s for s in self.servers if s.url == wanted), None)

    # -- generation and embeddings ----------------------------------------------------------

    async def open_generation(self, model: str, request: GenerationRequest) -> GenerationStream:
        server, stream = await self._route(model, lambda b: b.open_generation(model, request))
        return RoutedStream(stream, server.url, partial(self.finished, server, model_key(model)))

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        dimensions: int | None = None,
        ollama: dict[str, Any] | None = None,
    ) -> Embeddings:
        server, result = await self._route(
            model, lambda b: b.embed(model, inputs, dimensions=dimensions, ollama=ollama)
        )
        self._release(server)
        return result

    async def _route(
        self, model: str, call: Callable[[Backend], Awaitable[T]], *, counted: bool = True
    ) -> tuple[BackendServer, T]:
        """Run ``call`` on the best candidate for ``model``, the next one after a failure that
        allows it; ``counted``: the call holds a slot of the server (released by the caller)."""
        key = model_key(model)
        tried: set[int] = set()
        failure: errors.LlmserveError | None = None
        refreshed = False
        deadline: float | None = None
        while True:
            candidates = [s for s in self.servers if s.up and s.has(key) and s.index not in tried]
            if not candidates and not refreshed and not tried:
                refreshed = True  # a model pulled elsewhere a moment ago, or lists not read yet
                await self.refresh_models()
                continue
            if not candidates:
                raise failure or self._nowhere(model, key)
            if counted:
                candidates = [s for s in candidates if s.in_flight < self.per_server]
                if not candidates:
                    if deadline is None:
                        deadline = time.monotonic() + self._queue_timeout_s
                    await self._wait_for_room(model, deadline)
                    continue
            server = min(candidates, key=self._preference(key))
            self._turn += 1
            tried.add(server.index)
            if counted:
                server.in_flight += 1
            try:
                result = await call(server.backend)
            except BaseException as exc:
                if counted:
                    self._release(server)
                if not isinstance(exc, errors.LlmserveError) or not self._skip(server, key, exc):
                    raise
                failure = exc
                continue
            if counted:
                server.generations += 1
            return server, result

    def _preference(self, key: str) -> Callable[[BackendServer], tuple[int, bool, int]]:
        turn, count = self._turn, len(self.servers)
        return lambda s: (s.in_flight, key not in s.loaded, (s.index - turn) % count)

    def _skip(self, server: BackendServer, key: str, exc: errors.LlmserveError) -> bool:
        """Record ``exc`` (raised before any output); True to try the next candidate."""
        if isinstance(exc, errors.ModelNotFoundError):
            if server.models is not None:
                server.models.pop(key, None)  # deleted behind llmserve's back
            return True
        if not isinstance(exc, errors.BackendError):
            return False  # the request's own fault: every server would say the same
        server.record_error(exc.code, exc.detail)
        if isinstance(exc, errors.BackendTimeoutError):
            server.poke.set()
            return False  # it waited FIRST_TOKEN_TIMEOUT_S already
        if isinstance(exc, errors.BackendUnavailableError) and server.breaker.failed(exc.detail):
            log.warning("backend %s is out of rotation: %s", server.url, exc.detail)
        if not isinstance(exc, errors.BackendBusyError):
            server.poke.set()
        server.failovers += 1
        log.info("backend %s failed before output (%s); trying the next", server.url, exc.code)
        return True

    def _nowhere(self, model: str, key: str) -> errors.LlmserveError:
        """Why no server can take ``model``."""
        away = [s for s in self.servers if not s.up and s.has(key)]
        if away:
            return errors.BackendUnavailableError(
                f"model '{model}' is only on backend servers that are unavailable now: "
                + ", ".join(f"{s.url} ({s.status()})" for s in away),
                retry_after=self.retry_after(),
            )
        if not any(s.up for s in self.servers):
            return self.all_down()
        return errors.ModelNotFoundError(f"model '{model}' is not installed on any backend server")

    def all_down(self) -> errors.BackendUnavailableError:
        reasons = "; ".join(f"{s.url}: {s.status()}" for s in self.servers)
        return errors.BackendUnavailableError(
            f"no backend server is available ({reasons})", retry_after=self.retry_after()
        )

    def retry_after(self) -> int:
        """Seconds until the next probe of a server out of rotation (at least 1)."""
        now = time.monotonic()
        waits = [s.breaker.retry_at - now for s in self.servers if not s.up]
        return max(1, math.ceil(min(waits, default=1.0)))

    async def _wait_for_room(self, model: str, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._room.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await waiter
        except TimeoutError:
            raise errors.OverloadedError(
                f"every backend server that has model '{model}' runs {self.per_server} "
                "generations (MAX_CONCURRENT_GENERATIONS per server)",
                retry_after=max(1, math.ceil(min(self._queue_timeout_s, 5.0))),
            ) from None
        finally:
            if waiter in self._room:
                self._room.remove(waiter)

    def _wake(self) -> None:
        """Something changed (a slot freed, a server back, new lists): waiters look again."""
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_result(None)

    def _release(self, server: BackendServer) -> None:
        server.in_flight -= 1
        if self._room:
            self._wake()

    def finished(
        self,
        server: BackendServer,
        key: str,
        result: GenerationResult | None,
        failure: BaseException | None,
    ) -> None:
        """A routed generation ended: free its slot, learn from how it went."""
        self._release(server)
        if result is not None:
            server.loaded.add(key)
        elif isinstance(failure, errors.BackendError):
            server.record_error(failure.code, failure.detail)
            server.poke.set()  # a server that died mid-stream is taken out by its probe

    # -- health -----------------------------------------------------------------------------

    async def _watch(self, server: BackendServer) -> None:
        """Probe ``server`` every interval while it is up, at its backoff while it is down,
        and at once when a request saw it fail."""
        while True:
            server.poke.clear()
            wait = (
                self._interval_s
                if server.up
                else max(0.0, server.breaker.retry_at - time.monotonic())
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await server.poke.wait()
                    if not server.up:  # poked while down: keep to the backoff
                        await asyncio.sleep(max(0.0, server.breaker.retry_at - time.monotonic()))
            try:
                await self._probe(server)
            except Exception as exc:  # the watcher must outlive any surprise
                log.exception("probing backend %s failed", server.url)
                self._down(server, f"the probe failed: {exc!r}")

    async def _probe(self, server: BackendServer) -> None:
        """Probe ``server``; mark it up or down."""
        reason = await probe(server, self._probe_timeout_s)
        if reason is not None:
            self._down(server, reason)
            return
        if server.breaker.succeeded():
            log.warning("backend %s is back in rotation", server.url)
        self._wake()

    def _down(self, server: BackendServer, reason: str) -> None:
        server.record_error("probe_failed", reason)
        if server.breaker.failed(reason):
            log.warning("backend %s is out of rotation: %s", server.url, reason)

    async def refresh_models(self) -> None:
        """Re-read every server's model list now (concurrent callers share one read)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        async def one(server: BackendServer) -> None:
            try:
                async with asyncio.timeout(self._probe_timeout_s):
                    server.set_models(await server.backend.list_models())
            except (TimeoutError, errors.LlmserveError) as exc:
                detail = exc.detail if isinstance(exc, errors.LlmserveError) else "no answer"
                self._down(server, detail)

        await asyncio.gather(*(one(s) for s in self.servers if s.up))
        self._wake()

    # -- models -----------------------------------------------------------------------------

    def _up(self) -> list[BackendServer]:
        up = [s for s in self.servers if s.up]
        if not up:
            raise self.all_down()
        return up

    async def list_models(self) -> list[ModelInfo]:
        """The models of every server in rotation, each with the servers that have it."""
        self._up()
        await self.refresh_models()
        merged: dict[str, tuple[ModelInfo, list[str]]] = {}
        for server in self.servers:
            if not server.up or server.models is None:
                continue
            for key, info in server.models.items():
                merged.setdefault(key, (info, []))[1].append(server.url)
        if not any(s.up for s in self.servers):
            raise self.all_down()
        return [replace(info, backends=tuple(urls)) for info, urls in merged.values()]

    def unavailable_with(self, model: str) -> errors.BackendUnavailableError | None:
        """The error for a model that only servers out of rotation have (None otherwise)."""
        key = model_key(model)
        if any(s.up and s.has(key) for s in self.servers):
            return None
        error = self._nowhere(model, key)
        return error if isinstance(error, errors.BackendUnavailableError) else None

    async def version(self) -> str:
        """The lowest version among the servers in rotation."""
        versions = [s.version for s in self._up() if s.version]
        if not versions:
            versions = [await self._up()[0].backend.version()]
        return min(versions, key=_version_key)

    def pull(self, name: str) -> AsyncIterator[PullProgress]:
        return self._everywhere(name, lambda b: b.pull(name))

    def create(self, name: str, request: dict[str, Any]) -> AsyncIterator[PullProgress]:
        return self._everywhere(name, lambda b: b.create(name, request))

    async def _everywhere(
        self, name: str, start: Callable[[Backend], AsyncIterator[PullProgress]]
    ) -> AsyncIterator[PullProgress]:
        """One progress stream for the same work on every server in rotation."""
        targets = self._up()
        async for item in fan_in(name, [(s.url, start(s.backend)) for s in targets]):
            yield item
        await self.refresh_models()
        for server in self.servers:
            if server not in targets:
                yield PullProgress(status=f"skipped {server.url}: {server.status()}")
        yield PullProgress(status="success")

    async def delete(self, name: str) -> None:
        await self._on_holders(name, lambda b: b.delete(name), forget=True)

    async def copy(self, source: str, destination: str) -> None:
        await self._on_holders(source, lambda b: b.copy(source, destination))
        await self.refresh_models()

    async def warm(self, model: str, keep_alive: float | str | None = None) -> None:
        """Load (or with ``keep_alive`` 0 unload) ``model`` on every server that has it."""
        await self._on_holders(model, lambda b: b.warm(model, keep_alive))
        key = model_key(model)
        unloaded = keep_alive in (0, "0", "0s")
        for server in self.servers:
            if server.up and server.has(key):
                if unloaded:
                    server.loaded.discard(key)
                else:
                    server.loaded.add(key)

    async def _on_holders(
        self, model: str, call: Callable[[Backend], Awaitable[None]], *, forget: bool = False
    ) -> None:
        """``call`` on every server in rotation that has ``model``; a server out of rotation
        that has it too makes the whole a 503 (after the others are done)."""
        key = model_key(model)
        holders = [s for s in self._up() if s.has(key)]
        away = self.unavailable_with(model) if not holders else None
        if away is not None:
            raise away
        if not holders:
            raise errors.ModelNotFoundError(f"model '{model}' not found on any backend server")
        outcomes = await asyncio.gather(*(call(s.backend) for s in holders), return_exceptions=True)
        failed = [(s, o) for s, o in zip(holders, outcomes, strict=True) if o is not None]
        for server, outcome in zip(holders, outcomes, strict=True):
            if outcome is None and forget and server.models is not None:
                server.models.pop(key, None)
        for _, outcome in failed:
            if not isinstance(outcome, Exception):
                raise outcome  # a cancellation
        if failed:
            first = failed[0][1]
            if len(failed) == len(holders) and isinstance(first, errors.LlmserveError):
                raise first
            raise errors.BackendError(
                f"'{model}' failed on "
                + "; ".join(f"{s.url}: {getattr(o, 'detail', o)}" for s, o in failed)
            )
        left = [s.url for s in self.servers if not s.up and s.has(key)]
        if left:
            raise errors.BackendUnavailableError(
                f"'{model}' was handled on {', '.join(s.url for s in holders)}, but "
                f"{', '.join(left)} is unavailable and still has it",
                retry_after=self.retry_after(),
            )

    async def running_models(self) -> list[RunningModel]:
        """The loaded models of every server in rotation (a server that fails is left out)."""
        found = await asyncio.gather(
            *(s.backend.running_models() for s in self._up()), return_exceptions=True
        )
        return [model for item in found if isinstance(item, list) for model in item]

    async def show(self, model: str, *, verbose: bool = False) -> ModelCard:
        _, card = await self._route(model, lambda b: b.show(model, verbose=verbose), counted=False)
        return card


_NUMBER = re.compile(r"\d+")


def _version_key(version: str) -> tuple[int, ...]:
    """``0.12.0`` < ``0.12.10``; text without numbers sorts first."""
    return tuple(int(part) for part in _NUMBER.findall(version.split("-")[0]))


async def describe_servers(
    backend: Backend, urls: list[str], probe_timeout_s: float, *, fresh: bool = False
) -> list[dict[str, object]]:
    """Each backend server as ``describe()`` shows it: a pool's own view (probed now when
    ``fresh``), or for one server a probe made now."""
    servers = (
        backend.servers
        if isinstance(backend, BackendPool)
        else [BackendServer(0, url, backend, probe_timeout_s) for url in urls]
    )
    if fresh or not isinstance(backend, BackendPool):
        await asyncio.gather(*(check(server, probe_timeout_s) for server in servers))
    return [{"url": server.url, **server.describe()} for server in servers]
