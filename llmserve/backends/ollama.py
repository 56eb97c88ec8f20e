"""The Ollama backend: the only module that knows Ollama's wire format.

One shared ``httpx.AsyncClient`` carries every call. Transport failures and Ollama's
``{"error": …}`` bodies are translated here, once, into :mod:`llmserve.errors` types.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx

from llmserve import errors
from llmserve.backends.base import PrefetchingStream
from llmserve.domain import GenerationRequest, GenerationResult, ModelInfo, PullProgress, Usage

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 64 * 1024


class OllamaBackend:
    """Talks to one Ollama server through ``client`` (whose ``base_url`` is that server)."""

    name = "ollama"
    max_concurrency: int | None = None

    def __init__(
        self,
        client: httpx.AsyncClient,
        built_in_model: str,
        *,
        first_token_timeout_s: float = 300.0,
        idle_timeout_s: float = 60.0,
        total_timeout_s: float = 900.0,
    ) -> None:
        self._client = client
        self._built_in_model = built_in_model
        self._first_token_timeout_s = first_token_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._total_timeout_s = total_timeout_s

    @property
    def built_in_model(self) -> str:
        return self._built_in_model

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    async def start(self) -> None:
        """Nothing to learn: the built-in model comes from the settings."""

    # -- generation -------------------------------------------------------------------------

    async def open_generation(self, model: str, request: GenerationRequest) -> OllamaStream:
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "stream": True}
        if request.system is not None:
            body["system"] = request.system
        options = _options(request)
        if options:
            body["options"] = options
        timeout = self._client.timeout.as_dict()
        timeout["read"] = self._first_token_timeout_s
        http_request = self._client.build_request(
            "POST", "/api/generate", json=body, extensions={"timeout": timeout}
        )
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, model)
        # Headers arrive with the first chunk; from here on each read may wait at most the idle
        # timeout. httpcore reads this dict when the body iteration starts (no per-chunk cost).
        timeout["read"] = self._idle_timeout_s
        stream = OllamaStream(response, deadline=time.monotonic() + self._total_timeout_s)
        try:
            await stream.prefetch()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    # -- models -----------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        response = await self._send(self._client.build_request("GET", "/api/tags"))
        if response.status_code != 200:
            raise await self._error_from(response, None)
        payload = await _read_json(response)
        return [_model_info(item) for item in payload.get("models") or []]

    async def version(self) -> str:
        response = await self._send(self._client.build_request("GET", "/api/version"))
        if response.status_code != 200:
            raise await self._error_from(response, None)
        return str((await _read_json(response)).get("version", "unknown"))

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        timeout = self._client.timeout.as_dict()
        timeout["read"] = max(self._idle_timeout_s, 300.0)
        http_request = self._client.build_request(
            "POST",
            "/api/pull",
            json={"model": name, "stream": True},
            extensions={"timeout": timeout},
        )
        response = await self._send(http_request)
        try:
            if response.status_code != 200:
                raise await self._error_from(response, name)
            async for line in _ndjson(response):
                if "error" in line:
                    message = str(line["error"])
                    if "file does not exist" in message or "not found" in message:
                        raise errors.ModelNotFoundError(
                            f"model '{name}' was not found in the registry ({message})"
                        )
                    raise errors.BackendError(f"Ollama could not pull '{name}': {message}")
                progress = PullProgress(
                    status=str(line.get("status", "")),
                    digest=line.get("digest"),
                    total=line.get("total"),
                    completed=line.get("completed"),
                )
                yield progress
                if progress.status == "success":
                    return
            raise errors.BackendStreamError(f"Ollama ended the pull of '{name}' before success")
        finally:
            await response.aclose()

    async def delete(self, name: str) -> None:
        http_request = self._client.build_request("DELETE", "/api/delete", json={"model": name})
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, name)
        await response.aclose()

    async def warm(self, model: str) -> None:
        """Load ``model`` (an empty-prompt generate). Long timeout: loads are slow."""
        timeout = self._client.timeout.as_dict()
        timeout["read"] = self._first_token_timeout_s
        http_request = self._client.build_request(
            "POST",
            "/api/generate",
            json={"model": model, "prompt": "", "stream": False},
            extensions={"timeout": timeout},
        )
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, model)
        await response.aclose()

    async def aclose(self) -> None:
        """Nothing to release: the runtime owns the shared client."""

    # -- plumbing ---------------------------------------------------------------------------

    async def _send(self, http_request: httpx.Request) -> httpx.Response:
        try:
            return await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, self.base_url, started=False) from None

    async def _error_from(
        self, response: httpx.Response, model: str | None
    ) -> errors.LlmserveError:
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        message = _error_message(raw[:_MAX_ERROR_BODY]) or f"HTTP {response.status_code}"
        status = response.status_code
        if status == 404 and model is not None:
            return errors.ModelNotFoundError(f"model '{model}' is not installed in Ollama")
        if status == 503:
            return errors.BackendBusyError(f"Ollama is busy: {message}")
        if status == 400 and model is not None and "invalid model name" in message:
            return errors.InvalidModelNameError(f"invalid model name '{model}'")
        return errors.BackendError(f"Ollama answered {status}: {message}")


class OllamaStream(PrefetchingStream):
    """Text fragments of one ``/api/generate`` NDJSON stream (see ``backends/base.py``)."""

    def __init__(self, response: httpx.Response, deadline: float) -> None:
        self._response = response
        self._raw = response.aiter_raw()
        self._deadline = deadline
        self._buffer = b""
        self._finished = False
        self.result: GenerationResult | None = None
        self.tokens_received = 0

    async def _pieces(self) -> AsyncIterator[str]:
        if self._finished:
            return
        raw = self._raw
        loads = json.loads
        while True:
            try:
                chunk = await raw.__anext__()
            except StopAsyncIteration:
                break
            except httpx.HTTPError as exc:
                raise translate_transport_error(exc, "", started=True) from None
            if time.monotonic() > self._deadline:
                raise errors.BackendTimeoutError("the generation exceeded REQUEST_TIMEOUT_S")
            lines = (self._buffer + chunk).split(b"\n")
            self._buffer = lines.pop()
            for line in lines:
                if not line:
                    continue
                try:
                    obj = loads(line)
                except ValueError:
                    raise errors.BackendStreamError("Ollama sent a malformed line") from None
                if "error" in obj:
                    raise errors.BackendStreamError(f"Ollama failed mid-generation: {obj['error']}")
                text = obj.get("response") or ""
                if obj.get("done"):
                    self._finish(obj)
                    if text:
                        self.tokens_received += 1
                        yield text
                    return
                if text:
                    self.tokens_received += 1
                    yield text
        raise errors.BackendStreamError("Ollama closed the stream before the generation finished")

    def _finish(self, obj: dict[str, Any]) -> None:
        self._finished = True
        self.result = GenerationResult(
            done_reason=str(obj.get("done_reason") or "stop"),
            usage=Usage(
                prompt_tokens=int(obj.get("prompt_eval_count") or 0),
                completion_tokens=int(obj.get("eval_count") or 0),
            ),
        )

    async def aclose(self) -> None:
        # Closing the response closes the connection: this is what stops Ollama's work.
        await self._response.aclose()


def translate_transport_error(exc: httpx.HTTPError, base_url: str, *, started: bool) -> Exception:
    """The one place httpx errors become llmserve errors."""
    where = f" at {base_url}" if base_url else ""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return errors.BackendUnavailableError(
            f"cannot connect to Ollama{where}: {exc or 'refused'}"
        )
    if isinstance(exc, httpx.TimeoutException):
        phase = "the next token" if started else "the first token"
        return errors.BackendTimeoutError(f"Ollama{where} timed out waiting for {phase}")
    if started:
        return errors.BackendStreamError(f"the connection to Ollama broke mid-stream: {exc!r}")
    return errors.BackendError(f"the request to Ollama{where} failed: {exc!r}")


async def _ndjson(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in response.aiter_lines():
            if line.strip():
                yield json.loads(line)
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, "", started=True) from None
    except ValueError:
        raise errors.BackendStreamError("Ollama sent a malformed line") from None


async def _read_json(response: httpx.Response) -> dict[str, Any]:
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, "", started=True) from None
    finally:
        await response.aclose()
    try:
        payload = json.loads(raw)
    except ValueError:
        raise errors.BackendError("Ollama sent a body that is not JSON") from None
    if not isinstance(payload, dict):
        raise errors.BackendError("Ollama sent an unexpected JSON body")
    return payload


def _error_message(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return raw.decode("utf-8", "replace").strip()


def _options(request: GenerationRequest) -> dict[str, Any]:
    opts = request.options
    out: dict[str, Any] = {}
    if opts.temperature is not None:
        out["temperature"] = opts.temperature
    if opts.top_p is not None:
        out["top_p"] = opts.top_p
    if opts.top_k is not None:
        out["top_k"] = opts.top_k
    if opts.seed is not None:
        out["seed"] = opts.seed
    if opts.stop:
        out["stop"] = list(opts.stop)
    if opts.max_tokens is not None:
        out["num_predict"] = opts.max_tokens
    return out


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(value: str | None) -> datetime | None:
    """Ollama's RFC 3339 timestamps carry nanoseconds, which ``fromisoformat`` (3.11) refuses."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _model_info(item: dict[str, Any]) -> ModelInfo:
    modified_at = parse_timestamp(item.get("modified_at"))
    return ModelInfo(
        name=str(item.get("name") or item.get("model")),
        size=int(item.get("size") or 0),
        modified_at=modified_at,
        digest=item.get("digest"),
        details=dict(item.get("details") or {}),
    )
