"""Model management: list, pull, delete, switch, show, copy, create — the rules every face shares.

* names are validated with Ollama's rules before any backend call (``names.parse``);
* the built-in model can never be deleted (403), the active one not before a switch (409);
* a switch checks the backend's installed models first (404 "not found locally"; 503 when only
  a backend server out of rotation has it), then writes the database (last writer wins),
  updates this process at once and warms the model in the background; other processes follow
  within ``ACTIVE_MODEL_REFRESH_S``;
* with several backend servers, every list says where each model lives (``backends``), and pull
  and delete act on every server or on the one ``server`` names;
* copy and create never write over the built-in model (403);
* every pull, delete, switch, copy and create leaves an audit row: who, what, when, outcome.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from llmserve import errors, names
from llmserve.backends.base import Backend
from llmserve.backends.pool import BackendPool
from llmserve.db import repositories
from llmserve.domain import ModelCard, ModelInfo, PullProgress, RunningModel
from llmserve.services.active_model import ActiveModelService

log = logging.getLogger(__name__)


def is_installed(name: str, models: Iterable[ModelInfo]) -> bool:
    return find_installed(name, models) is not None


def find_installed(name: str, models: Iterable[ModelInfo]) -> ModelInfo | None:
    """The installed model that ``name`` means (``llama3.2`` finds ``llama3.2:latest``)."""
    return next((model for model in models if names.same_model(model.name, name)), None)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    info: ModelInfo
    active: bool
    built_in: bool


def check_deletable(name: str, *, built_in: str | None, active: str) -> None:
    """Refuse to delete the built-in model or the active one (the CLI asks this before it asks
    the user to confirm; a delete asks it again)."""
    if built_in is not None and names.same_model(name, built_in):
        raise errors.ModelProtectedError(
            f"model '{name}' is the built-in model and cannot be deleted"
        )
    if names.same_model(name, active):
        raise errors.ModelInUseError(
            f"model '{name}' is the active model; switch to another model first"
        )


class ModelService:
    #: How long ``resolve`` trusts its copy of the installed list.
    INSTALLED_CACHE_S = 2.0

    def __init__(
        self,
        backend: Backend,
        active_model: ActiveModelService,
        sessions: sessionmaker[Session],
        *,
        validate_names: bool = True,
        servers: list[str] | None = None,
    ) -> None:
        self._backend = backend
        #: Where a lone backend's models live (its base URL as configured), for the lists.
        self._home = tuple(servers or ()) if len(servers or ()) == 1 else ()
        self._active = active_model
        self._sessions = sessions
        self._validate_names = validate_names
        self._warming: set[asyncio.Task[None]] = set()
        self._installed_cache: tuple[float, list[ModelInfo]] | None = None  # (read at, models)
        self._installed_read: tuple[float, asyncio.Future[list[ModelInfo]]] | None = None

    def validate(self, name: str) -> str:
        """Check ``name`` (Ollama's rules for Ollama; non-empty otherwise); return it stripped."""
        if self._validate_names:
            names.parse(name)
        elif not name or not name.strip() or "\x00" in name or len(name) > 600:
            raise errors.InvalidModelNameError(f"invalid model name {name!r}")
        return name

    @property
    def active(self) -> str:
        return self._active.current

    @property
    def built_in(self) -> str:
        return self._backend.built_in_model

    async def list(self) -> list[ModelEntry]:
        models = await self._backend.list_models()
        active, built_in = self.active, self.built_in
        return [
            ModelEntry(
                info=(
                    model
                    if model.backends or not self._home
                    else replace(model, backends=self._home)
                ),
                active=names.same_model(model.name, active),
                built_in=names.same_model(model.name, built_in),
            )
            for model in models
        ]

    async def resolve(self, name: str) -> str:
        """The model a client's ``name`` means: the active model, or an installed one.

        ``llama3.2`` and ``LLAMA3.2:latest`` both find ``llama3.2:latest``. The installed list is
        cached for ``INSTALLED_CACHE_S`` so a generation rarely pays a backend round trip; a
        miss re-reads it once (a model pulled a moment ago), then raises ModelNotFoundError.
        """
        active = self.active
        if names.same_model(name, active):
            return active
        asked = time.monotonic()
        found = find_installed(name, await self._installed(asked - self.INSTALLED_CACHE_S))
        if found is None:
            found = find_installed(name, await self._installed(asked))
        if found is None:
            raise errors.ModelNotFoundError(
                f"model '{name}' not found: it is neither installed nor the active model"
            )
        return found.name

    async def _installed(self, fresh_after: float) -> builtins.list[ModelInfo]:
        """The installed models as read at or after ``fresh_after``.

        Concurrent callers share one backend read (a slow backend is asked once, not once per
        waiting request); a caller that leaves does not cancel the read for the others.
        """
        cached = self._installed_cache
        if cached is not None and cached[0] >= fresh_after:
            return cached[1]
        reading = self._installed_read
        if reading is None or reading[0] < fresh_after:
            started = time.monotonic()
            task = asyncio.ensure_future(self._read_installed(started))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen, if unawaited
            reading = self._installed_read = (started, task)
        return await asyncio.shield(reading[1])

    async def _read_installed(self, started: float) -> builtins.list[ModelInfo]:
        models = await self._backend.list_models()
        self._installed_cache = (started, models)
        return models

    async def pull(
        self, name: str, *, actor: str, server: str | None = None
    ) -> AsyncIterator[PullProgress]:
        """Pull ``name`` (on every backend server, or the one ``server`` names), yielding
        progress; the last item has status ``success``."""
        self.validate(name)
        backend = self._on(server)
        outcome, detail = "error", None
        try:
            async for progress in backend.pull(name):
                if progress.status == "success":
                    outcome = "ok"  # installed, whether or not the client reads this
                yield progress
        except errors.LlmserveError as exc:
            outcome, detail = _outcome(exc), exc.detail
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if outcome != "ok":
                outcome, detail = "cancelled", "the client went away"
            raise
        finally:
            await self._audit(actor, "pull", name, outcome, detail)

    async def delete(self, name: str, *, actor: str, server: str | None = None) -> None:
        """Delete ``name`` (from every backend server that has it, or the one ``server``
        names)."""
        self.validate(name)
        backend = self._on(server)
        try:
            check_deletable(name, built_in=self.built_in, active=self.active)
            installed = find_installed(name, await backend.list_models())
            if installed is None:
                raise errors.ModelNotFoundError(f"model '{name}' not found locally")
            await backend.delete(installed.name)
        except errors.LlmserveError as exc:
            await self._audit(actor, "delete", name, _outcome(exc), exc.detail)
            raise
        await self._audit(actor, "delete", name, "ok", None)

    async def switch(self, name: str, *, actor: str, warm: bool = True) -> str:
        """Make ``name`` the active model everywhere; return the installed model's name."""
        self.validate(name)
        try:
            installed = find_installed(name, await self._backend.list_models())
            away = self._only_away(name) if installed is None else None
            if away is not None:
                raise away
            if installed is None:
                raise errors.ModelNotFoundError(f"model '{name}' not found locally; pull it first")
            await self._store_active(installed.name)
        except errors.LlmserveError as exc:
            await self._audit(actor, "switch", name, _outcome(exc), exc.detail)
            raise
        self._active.set_local(installed.name)
        await self._audit(actor, "switch", name, "ok", f"active model is now {installed.name}")
        if warm:
            task = asyncio.create_task(self._warm(installed.name), name=f"warm {installed.name}")
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)
        return installed.name

    async def load(self, name: str, keep_alive: float | str | None = None) -> str:
        """Load the installed model ``name`` means (``keep_alive`` 0: unload it), as Ollama does
        for a generation with nothing to generate; return its name."""
        model = await self.resolve(name)
        await self._backend.warm(model, keep_alive)
        return model

    async def show(self, name: str, *, verbose: bool = False) -> ModelCard:
        """What the backend knows of the installed model ``name`` means (404 if none)."""
        self.validate(name)
        return await self._backend.show(await self.resolve(name), verbose=verbose)

    async def running(self) -> builtins.list[RunningModel]:
        """The models the backend holds in memory now."""
        return await self._backend.running_models()

    async def ollama_version(self) -> str | None:
        """The version of the Ollama server behind llmserve; None for the other engines, whose
        versions are not Ollama versions."""
        return await self._backend.version() if self._backend.name == "ollama" else None

    async def copy(self, source: str, destination: str, *, actor: str) -> None:
        """Install ``source`` again as ``destination``; both names are checked first."""
        self.validate(source)
        self.validate(destination)
        target = f"{source} -> {destination}"
        try:
            self._refuse_overwriting_built_in(destination)
            await self._backend.copy(source, destination)
        except errors.LlmserveError as exc:
            await self._audit(actor, "copy", target, _outcome(exc), exc.detail)
            raise
        await self._audit(actor, "copy", target, "ok", None)

    async def create(
        self, name: str, request: dict[str, Any], *, actor: str
    ) -> AsyncIterator[PullProgress]:
        """Create ``name`` from an Ollama create ``request`` (its ``from`` checked as a name
        too), yielding progress until the end; the last item has status ``success``."""
        self.validate(name)
        base = request.get("from")
        if isinstance(base, str) and base:
            self.validate(base)
        outcome, detail = "error", None
        try:
            self._refuse_overwriting_built_in(name)
            async for progress in self._backend.create(name, request):
                yield progress
            outcome = "ok"
        except errors.LlmserveError as exc:
            outcome, detail = _outcome(exc), exc.detail
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome, detail = "cancelled", "the client went away"
            raise
        finally:
            await self._audit(actor, "create", name, outcome, detail)

    def _on(self, server: str | None) -> Backend:
        """The backend of the server ``server`` names (a configured base URL); all of them
        when None."""
        if server is None:
            return self._backend
        if isinstance(self._backend, BackendPool):
            found = self._backend.server(server)
            if found is not None:
                if not found.up:
                    raise errors.BackendUnavailableError(
                        f"backend server {found.url} is unavailable: {found.status()}",
                        retry_after=self._backend.retry_after(),
                    )
                return found.backend
            known = [s.url for s in self._backend.servers]
        else:
            if self._home and server.strip().rstrip("/") == self._home[0]:
                return self._backend
            known = list(self._home)
        raise errors.InvalidRequestError(
            f"no backend server {server!r} is configured; the servers are: "
            + (", ".join(known) or "none (the embedded engine)")
        )

    def _only_away(self, name: str) -> errors.LlmserveError | None:
        """503 for a model that only backend servers out of rotation have."""
        if isinstance(self._backend, BackendPool):
            return self._backend.unavailable_with(name)
        return None

    def _refuse_overwriting_built_in(self, name: str) -> None:
        if names.same_model(name, self.built_in):
            raise errors.ModelProtectedError(
                f"model '{name}' is the built-in model and cannot be overwritten"
            )

    async def aclose(self) -> None:
        for task in list(self._warming):
            task.cancel()
        await asyncio.gather(*self._warming, return_exceptions=True)

    async def _warm(self, model: str) -> None:
        try:
            await self._backend.warm(model)
        except errors.LlmserveError as exc:
            log.warning("could not warm %r after the switch: %s", model, exc.detail)

    async def _store_active(self, model: str) -> None:
        def write() -> None:
            with self._sessions.begin() as session:
                repositories.set_setting(session, repositories.ACTIVE_MODEL_KEY, model)

        try:
            await asyncio.to_thread(write)
        except SQLAlchemyError as exc:
            raise errors.DatabaseUnavailableError(
                "cannot record the active model: the database is unavailable "
                f"({exc.__class__.__name__})"
            ) from None

    async def _audit(
        self, actor: str, action: str, target: str, outcome: str, detail: str | None
    ) -> None:
        def write() -> None:
            with self._sessions.begin() as session:
                repositories.insert_audit(
                    session,
                    actor=actor,
                    action=action,
                    target=target[:400],
                    outcome=outcome,
                    detail=detail,
                )

        try:
            await asyncio.shield(asyncio.to_thread(write))
        except SQLAlchemyError as exc:
            log.error("audit row lost (%s %s %s): %s", actor, action, target, exc)


def _outcome(exc: errors.LlmserveError) -> str:
    if isinstance(exc, errors.InvalidRequestError | errors.ModelNotFoundError):
        return "rejected"
    if isinstance(exc, errors.ModelProtectedError | errors.ModelInUseError):
        return "refused"
    return "error"
