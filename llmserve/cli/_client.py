"""What a command talks to, behind one small interface (:class:`Client`):

* :class:`Local`: the backend and the database, through the core library (a ``Runtime``);
* :class:`llmserve.cli._remote.Remote`: a running llmserve, over its native HTTP API
  (``--server URL`` or ``LLMSERVE_SERVER``, with ``--api-key`` or ``LLMSERVE_API_KEY``).

Both give the same results (:class:`Reply`, :class:`Ending`, :class:`ModelRow`, progress items)
and raise the same error types (``llmserve/errors.py``), so each command renders its output and
picks its exit code once, whichever one it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import typer

from llmserve import errors, names
from llmserve.cli._run import backend_settings_or_exit, cli_actor, fail
from llmserve.domain import GenerationRequest, PullProgress
from llmserve.settings import Settings

if TYPE_CHECKING:
    from llmserve.runtime import Runtime
    from llmserve.services.generation import Generation

#: The request log's route for generations the CLI runs itself.
ROUTE = "cli"

#: What kind of answer a command asks for: ``generate`` (one prompt) or ``chat`` (a conversation).
Kind = Literal["generate", "chat"]

SERVER_HELP = "Talk to a running llmserve at URL instead of the backend and database."


def server_option() -> Any:
    return typer.Option(None, "--server", envvar="LLMSERVE_SERVER", metavar="URL", help=SERVER_HELP)


def api_key_option() -> Any:
    return typer.Option(
        None,
        "--api-key",
        envvar="LLMSERVE_API_KEY",
        metavar="KEY",
        help="The API key to send to --server.",
        show_envvar=True,
    )


@dataclass(frozen=True, slots=True)
class Ending:
    """What the end of an answer said; None where it was not told (a remote stream)."""

    model: str | None = None
    done_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def payload(self, field: str, answer: object) -> dict[str, Any]:
        """The answer as ``--json`` prints it: ``field``, then model, done reason, usage."""
        return {
            field: answer,
            "model": self.model,
            "done_reason": self.done_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
        }


class Reply(Protocol):
    """An answer as it arrives: its text pieces, then :attr:`ending` once it ended normally.
    :meth:`aclose` stops it upstream (idempotent)."""

    def __aiter__(self) -> AsyncIterator[str]: ...

    @property
    def ending(self) -> Ending | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelRow:
    """An installed model as ``models list`` shows it."""

    name: str
    size: int
    modified_at: datetime | None
    digest: str | None
    active: bool
    built_in: bool


@dataclass(frozen=True, slots=True)
class ModelListing:
    models: list[ModelRow]
    active: str
    #: The built-in model's name, when known (a remote server marks it only when installed).
    built_in: str | None


class Client(Protocol):
    """A command's way to the models: :class:`Local` or ``Remote``. Used as an async context
    manager; every method raises ``LlmserveError`` types only."""

    async def __aenter__(self) -> Client: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def answer(self, request: GenerationRequest, *, kind: Kind, stream: bool) -> Reply:
        """Start an answer. ``stream=False`` may wait for the whole answer (remote: one JSON
        response, whose ending has the model and usage); it is read the same way."""
        ...

    async def embed(
        self, inputs: list[str], model: str | None, dimensions: int | None
    ) -> dict[str, Any]:
        """``{"model", "embeddings", "usage": {"prompt_tokens"}}``."""
        ...

    async def models(self) -> ModelListing: ...

    async def active(self) -> str: ...

    async def switch(self, name: str) -> None: ...

    async def delete(self, name: str, backend: str | None = None) -> None: ...

    def pull(self, name: str, backend: str | None = None) -> AsyncIterator[PullProgress]: ...

    def validate(self, name: str) -> None:
        """Refuse an invalid model name before anything else (a no-op where the server
        checks names itself)."""
        ...


def open_client(server: str | None, api_key: str | None) -> Client:
    """The remote client when ``server`` is given, else the local one (its settings checked
    now, so a bad setting is one red line before anything starts)."""
    if server:
        from llmserve.cli._remote import Remote

        return Remote(server_url(server), api_key or None)
    return Local(backend_settings_or_exit())


def server_url(value: str) -> str:
    """``--server``, checked: an http(s) URL with a host; without a trailing slash."""
    import httpx

    try:
        url = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        fail(f"--server must be an http:// or https:// URL, not {value!r}", 2)
    return str(url).rstrip("/")


@contextlib.contextmanager
def connected(client: Client) -> Iterator[asyncio.Runner]:
    """One event loop with ``client`` open, for a command of several steps (a question to the
    user in between: it is asked outside the loop, so Ctrl-C there behaves as at any prompt)."""
    with asyncio.Runner() as runner:
        runner.run(client.__aenter__())
        try:
            yield runner
        finally:
            with contextlib.suppress(Exception, KeyboardInterrupt):
                runner.run(client.__aexit__(None, None, None))


def check_delete(name: str, listing: ModelListing) -> None:
    """Refuse to delete the built-in model, the active one, or one not installed — before the
    user is asked to confirm. The server (or the model service) checks the same again."""
    from llmserve.services.models import check_deletable  # the services load on use

    check_deletable(name, built_in=listing.built_in, active=listing.active)
    if not any(names.same_model(name, row.name) for row in listing.models):
        raise errors.ModelNotFoundError(f"model '{name}' not found locally")


class Local:
    """The backend and the database, through the same services as the API."""

    def __init__(self, settings: Settings, actor: str | None = None) -> None:
        self.settings = settings
        self.actor = actor or cli_actor()
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "use the client as an async context manager"
        return self._runtime

    async def __aenter__(self) -> Local:
        from llmserve.runtime import Runtime

        runtime = Runtime(self.settings, follow_active_model=False)
        await runtime.__aenter__()
        self._runtime = runtime
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await runtime.__aexit__(exc_type, exc, traceback)

    async def answer(self, request: GenerationRequest, *, kind: Kind, stream: bool) -> Reply:
        generation = await self.runtime.generation.generate(request, route=ROUTE)
        return _LocalReply(generation)

    async def embed(
        self, inputs: list[str], model: str | None, dimensions: int | None
    ) -> dict[str, Any]:
        answer = await self.runtime.embeddings.embed(
            inputs, route=ROUTE, model=model, dimensions=dimensions
        )
        return {
            "model": answer.model,
            "embeddings": answer.embeddings.vectors,
            "usage": {"prompt_tokens": answer.embeddings.prompt_tokens},
        }

    async def models(self) -> ModelListing:
        models = self.runtime.models
        rows = [
            ModelRow(
                name=e.info.name,
                size=e.info.size,
                modified_at=e.info.modified_at,
                digest=e.info.digest,
                active=e.active,
                built_in=e.built_in,
            )
            for e in await models.list()
        ]
        return ModelListing(rows, models.active, models.built_in)

    async def active(self) -> str:
        return self.runtime.models.active

    async def switch(self, name: str) -> None:
        await self.runtime.models.switch(name, actor=self.actor, warm=False)

    async def delete(self, name: str, backend: str | None = None) -> None:
        await self.runtime.models.delete(name, actor=self.actor, server=backend)

    def pull(self, name: str, backend: str | None = None) -> AsyncIterator[PullProgress]:
        return self.runtime.models.pull(name, actor=self.actor, server=backend)

    def validate(self, name: str) -> None:
        self.runtime.models.validate(name)


class _LocalReply:
    """A generation of this process, read as text pieces."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation

    async def __aiter__(self) -> AsyncIterator[str]:
        async for piece in self._generation:
            if type(piece) is str:
                yield piece

    @property
    def ending(self) -> Ending | None:
        result = self._generation.result
        if result is None:
            return None
        return Ending(
            model=self._generation.model,
            done_reason=result.done_reason,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
        )

    async def aclose(self) -> None:
        await self._generation.aclose()
