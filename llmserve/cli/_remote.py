"""The CLI as a client of a running llmserve: its native HTTP API (``/api/v1/…``), with the API
key as ``Authorization: Bearer``. Streams are Server-Sent Events (read with ``httpx-sse``).

Every refusal becomes the error type its ``code`` names in the one registry
(``llmserve/errors.py``), so a command's message and exit code are those of the local mode:

* a 429 says when to try again (its ``Retry-After``); a 401 without a key says how to give one;
* a server that cannot be reached is ``BackendUnavailableError`` (as a backend that is down in
  the local mode), one that does not answer in time ``BackendTimeoutError``, a connection that
  breaks mid-answer ``BackendStreamError``;
* an error event after the stream started is raised the same way as an error status.

Leaving a stream early (Ctrl-C, ``aclose``) closes the HTTP connection: the server then stops
the generation upstream.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from llmserve import errors
from llmserve.cli._client import Ending, Kind, ModelListing, ModelRow
from llmserve.domain import GenerationOptions, GenerationRequest, PullProgress, ResponseFormat

#: Each error type by its ``code``, from the registry (a server's error body names its type).
ERROR_TYPES: dict[str, type[errors.LlmserveError]] = {
    cls.code: cls for cls in errors.all_error_types()
}

#: Connecting and sending are quick or broken; an answer may take long before its first byte
#: (the server applies its own generation timeouts, and pings a quiet stream).
TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=600.0)

_OPTION_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "max_tokens",
    "num_ctx",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "keep_alive",
)


class Remote:
    """A running llmserve at ``base_url`` (see the module's docstring)."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "use the client as an async context manager"
        return self._http

    async def __aenter__(self) -> Remote:
        headers = {"User-Agent": "llmserve-cli"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=TIMEOUT)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- generations ------------------------------------------------------------------------

    async def answer(
        self, request: GenerationRequest, *, kind: Kind, stream: bool
    ) -> _Whole | _Streamed:
        """A stream is opened here, up to its first event, so a refusal is raised before any
        output, as in the local mode."""
        path, body = f"/api/v1/{kind}", request_body(request, kind)
        if stream:
            events = self._events("POST", path, json={**body, "stream": True})
            try:
                first = await anext(events, None)
            except BaseException:
                await events.aclose()  # type: ignore[attr-defined]
                raise
            return _Streamed(first, events)
        answer = await self._json("POST", path, json={**body, "stream": False})
        text = answer.get("response") if kind == "generate" else answer["message"]["content"]
        usage = answer.get("usage") or {}
        ending = Ending(
            model=answer.get("model"),
            done_reason=answer.get("done_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )
        return _Whole(str(text or ""), ending)

    async def embed(
        self, inputs: list[str], model: str | None, dimensions: int | None
    ) -> dict[str, Any]:
        if model is not None or dimensions is not None:
            raise errors.InvalidRequestError(
                "--model and --dimensions are not available with --server: the server embeds "
                "with its EMBEDDING_MODEL (else its active model)"
            )
        answer = await self._json("POST", "/api/v1/embed", json={"input": inputs})
        return {
            "model": answer["model"],
            "embeddings": answer["embeddings"],
            "usage": {"prompt_tokens": answer["usage"]["prompt_tokens"]},
        }

    # -- models -----------------------------------------------------------------------------

    async def models(self) -> ModelListing:
        answer = await self._json("GET", "/api/v1/models")
        rows = [
            ModelRow(
                name=m["name"],
                size=int(m.get("size") or 0),
                modified_at=(
                    datetime.fromisoformat(m["modified_at"]) if m.get("modified_at") else None
                ),
                digest=m.get("digest"),
                active=bool(m.get("active")),
                built_in=bool(m.get("built_in")),
            )
            for m in answer["models"]
        ]
        built_in = next((row.name for row in rows if row.built_in), None)
        return ModelListing(rows, str(answer["active"]), built_in)

    async def active(self) -> str:
        return str((await self._json("GET", "/api/v1/models/active"))["model"])

    async def switch(self, name: str) -> None:
        await self._json("POST", f"/api/v1/models/switch/{_path(name)}")

    async def delete(self, name: str, backend: str | None = None) -> None:
        params = {"server": backend} if backend else None
        await self._json("DELETE", f"/api/v1/models/{_path(name)}", params=params)

    async def pull(self, name: str, backend: str | None = None) -> AsyncIterator[PullProgress]:
        params = {"stream": "true", **({"server": backend} if backend else {})}
        events = self._events("POST", "/api/v1/models/pull", params=params, json={"name": name})
        async for data in events:
            yield PullProgress(
                status=str(data.get("status", "")),
                digest=data.get("digest"),
                total=data.get("total"),
                completed=data.get("completed"),
            )

    def validate(self, name: str) -> None:
        """The server checks names with its own backend's rules."""

    async def backends(self) -> list[dict[str, Any]]:
        """The backend servers as the running llmserve sees them (admin keys)."""
        return list((await self._json("GET", "/api/v1/backends"))["backends"])

    # -- HTTP -------------------------------------------------------------------------------

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        with self._translated():
            response = await self.http.request(method, path, **kwargs)
            if not response.is_success:
                raise self._error(response)
            try:
                body = response.json()
            except ValueError:  # not JSON: not llmserve's API (a proxy's page, another service)
                body = response.text.strip()[:80]
        if not isinstance(body, dict):
            raise errors.LlmserveError(f"llmserve at {self.base_url} answered {body!r}")
        return body

    async def _events(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """The ``data`` of each event, as JSON objects, until ``data: {}`` or the stream's end;
        an ``error`` event is raised as its error type."""
        with self._translated():
            async with aconnect_sse(self.http, method, path, **kwargs) as source:
                response = source.response
                if not response.is_success:
                    await response.aread()
                    raise self._error(response)
                async for event in _server_events(source):
                    data = _data(event)
                    if event.event == "error":
                        raise self._error_of(data.get("code"), data.get("detail"), None)
                    if not data:
                        return
                    yield data

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """httpx's failures as the error types of a backend that fails the same way."""
        where = f"llmserve at {self.base_url}"
        try:
            yield
        except httpx.ConnectError as exc:
            raise errors.BackendUnavailableError(f"cannot reach {where}: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise errors.BackendTimeoutError(f"{where} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise errors.BackendStreamError(
                f"the connection to {where} broke: {_reason(exc)}"
            ) from None

    def _error(self, response: httpx.Response) -> errors.LlmserveError:
        """The error an error response stands for (see the module's docstring)."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            body = {}
        code, detail = body.get("code"), body.get("detail")
        if response.status_code == 422 and isinstance(detail, list):
            messages = [str(item.get("msg", item)) for item in detail if isinstance(item, dict)]
            return errors.InvalidRequestError("; ".join(messages) or "invalid request")
        if code not in ERROR_TYPES or not isinstance(detail, str):
            text = response.text.strip()[:200] or response.reason_phrase
            detail = f"llmserve at {self.base_url} answered HTTP {response.status_code}: {text}"
            code = None
        return self._error_of(code, detail, response.headers.get("retry-after"))

    def _error_of(
        self, code: object, detail: object, retry_after: str | None
    ) -> errors.LlmserveError:
        cls = ERROR_TYPES.get(code) if isinstance(code, str) else None
        message = detail if isinstance(detail, str) else f"llmserve at {self.base_url} failed"
        wait = int(retry_after) if retry_after is not None and retry_after.isdigit() else None
        if cls is None:
            return errors.LlmserveError(message)
        if cls.status == 429 and wait is not None and f"in {wait} s" not in message:
            message = f"{message}; try again in {wait} s"
        if issubclass(cls, errors.AuthenticationError) and not self.api_key:
            message = f"{message}; give the key with --api-key or LLMSERVE_API_KEY"
        error = cls(message)
        if wait is not None:
            error.retry_after = wait
        return error


class _Whole:
    """A whole answer, read in one piece."""

    def __init__(self, text: str, ending: Ending) -> None:
        self._text = text
        self.ending = ending

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._text:
            yield self._text

    async def aclose(self) -> None:
        pass


class _Streamed:
    """A streamed answer: the text of each event as it arrives."""

    def __init__(self, first: dict[str, Any] | None, events: AsyncIterator[dict[str, Any]]) -> None:
        self._first = first
        self._events = events
        self.ending: Ending | None = Ending() if first is None else None

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._first is None:
            return
        try:
            data: dict[str, Any] | None = self._first
            while data is not None:
                text = data.get("response")
                if isinstance(text, str) and text:
                    yield text
                data = await anext(self._events, None)
            self.ending = Ending()  # the end of a stream says nothing more
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]


async def _server_events(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    async for event in source.aiter_sse():
        if event.event in ("message", "error"):  # comments (``: ping``) never come here
            yield event


def _data(event: ServerSentEvent) -> dict[str, Any]:
    try:
        data = event.json()
    except json.JSONDecodeError:
        raise errors.BackendStreamError(
            f"the server sent an event that is not JSON: {event.data[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise errors.BackendStreamError(f"the server sent an event that is not an object: {data!r}")
    return data


def request_body(request: GenerationRequest, kind: Kind) -> dict[str, Any]:
    """The native API's body for ``request`` (without ``stream``)."""
    body: dict[str, Any] = {}
    if kind == "generate":
        single = request.single_prompt
        assert single is not None, "generate sends one prompt"
        body["prompt"], system = single
        if system is not None:
            body["system"] = system
    else:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    options = _options(request.options)
    if options:
        body["options"] = options
    if request.response_format is not None:
        body["format"] = _format(request.response_format)
    return body


def _options(options: GenerationOptions) -> dict[str, Any]:
    wire = {name: getattr(options, name) for name in _OPTION_FIELDS}
    if options.stop:
        wire["stop"] = list(options.stop)
    return {name: value for name, value in wire.items() if value is not None}


def _format(response_format: ResponseFormat) -> object:
    if response_format.kind == "json_schema":
        return response_format.schema
    return response_format.kind


def _path(name: str) -> str:
    """A model name in a path: ``/`` and ``:`` kept (the routes take them), the rest quoted."""
    return quote(name, safe="/:")


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc).strip()
    return text or exc.__class__.__name__
