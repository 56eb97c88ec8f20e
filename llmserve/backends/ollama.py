"""The Ollama backend: the only module that knows Ollama's wire format.

Generations, the hot path, go through a lean keep-alive HTTP/1.1 pool (``_http1``); every
other call (tags, pull, delete, warm-up) through the runtime's shared ``httpx.AsyncClient``.
Transport failures and Ollama's ``{"error": …}`` bodies are translated here, once, into
:mod:`llmserve.errors` types.
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
import orjson

from llmserve import __version__, errors
from llmserve.backends import _http1
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
        self._pool = _http1.Http1Pool(
            str(client.base_url),
            connect_timeout=client.timeout.connect or 30.0,
            user_agent=f"llmserve/{__version__}",
        )

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
        payload = orjson.dumps(body)
        try:
            response = await self._pool.post_json(
                "/api/generate", payload, wait_s=self._first_token_timeout_s
            )
        except _http1.UpstreamError as exc:
            raise translate_transport_error(exc, self.base_url, started=False) from None
        if response.status != 200:
            try:
                raw = await response.read(_MAX_ERROR_BODY, self._idle_timeout_s)
            except _http1.UpstreamError:
                raw = b""
            finally:
                await response.aclose()
            raise self._error(response.status, raw, model)
        stream = OllamaStream(
            response,
            idle_timeout_s=self._idle_timeout_s,
            deadline=time.monotonic() + self._total_timeout_s,
        )
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
        """Close the generation connections (the runtime owns the shared httpx client)."""
        self._pool.close()

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
        return self._error(response.status_code, raw, model)

    @staticmethod
    def _error(status: int, raw: bytes, model: str | None) -> errors.LlmserveError:
        message = _error_message(raw[:_MAX_ERROR_BODY]) or f"HTTP {status}"
        if status == 404 and model is not None:
            return errors.ModelNotFoundError(f"model '{model}' is not installed in Ollama")
        if status == 503:
            return errors.BackendBusyError(f"Ollama is busy: {message}")
        if status == 400 and model is not None and "invalid model name" in message:
            return errors.InvalidModelNameError(f"invalid model name '{model}'")
        return errors.BackendError(f"Ollama answered {status}: {message}")


class OllamaStream(PrefetchingStream):
    """Text fragments of one ``/api/generate`` NDJSON stream (see ``backends/base.py``).

    Each wake-up takes every line that has arrived, so a burst of tokens is one batch.
    """

    def __init__(
        self, response: _http1.Response, *, idle_timeout_s: float, deadline: float
    ) -> None:
        self._response = response
        self._idle_timeout_s = idle_timeout_s
        self._deadline = deadline
        self._buffer = b""
        self._finished = False
        self.result: GenerationResult | None = None
        self.tokens_received = 0

    async def _batches(self) -> AsyncIterator[list[str]]:
        try:
            response = self._response
            while not self._finished:
                try:
                    chunks = await response.chunks(self._idle_timeout_s)
                except _http1.UpstreamError as exc:
                    raise translate_transport_error(exc, "", started=True) from None
                if not chunks:
                    raise errors.BackendStreamError(
                        "Ollama closed the stream before the generation finished"
                    )
                if time.monotonic() > self._deadline:
                    raise errors.BackendTimeoutError("the generation exceeded REQUEST_TIMEOUT_S")
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                lines = (self._buffer + data if self._buffer else data).split(b"\n")
                self._buffer = lines.pop()
                objects, failure = _parse_lines(lines)
                batch: list[str] = []
                for obj in objects:
                    if "error" in obj:
                        failure = errors.BackendStreamError(
                            f"Ollama failed mid-generation: {obj['error']}"
                        )
                        break
                    text = obj.get("response")
                    if text:
                        batch.append(text)
                    if obj.get("done"):
                        self._finish(obj)
                        break
                self.tokens_received += len(batch)
                if self._finished:
                    await self._drain()
                if batch:
                    yield batch  # the text before a failure still reaches the client
                if failure is not None and not self._finished:
                    raise failure
        except BaseException as exc:
            self.failure = exc
            raise

    async def _drain(self) -> None:
        """Read the body's end so that the connection can go back to the pool (best effort)."""
        try:
            while await self._response.chunks(self._idle_timeout_s):
                pass
        except _http1.UpstreamError:
            pass  # the answer is complete; a broken tail only costs the connection

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
        # Unless the body was read to its end, this aborts the connection: what stops Ollama.
        await self._response.aclose()


def _parse_lines(lines: list[bytes]) -> tuple[list[dict[str, Any]], errors.LlmserveError | None]:
    """The NDJSON objects of one read, parsed in one call (a burst of 64 tokens is one parse).

    On a malformed line, the objects before it and the error: the text before it still counts.
    """
    lines = [line for line in lines if line]
    if len(lines) > 1:
        try:
            parsed = orjson.loads(b"[" + b",".join(lines) + b"]")
            # As many objects as lines: '{...},{...}' on one line is malformed, not two objects.
            if len(parsed) == len(lines) and all(type(obj) is dict for obj in parsed):
                return parsed, None
        except ValueError:
            pass
    objects: list[dict[str, Any]] = []
    for line in lines:  # find the bad line
        try:
            obj = orjson.loads(line)
        except ValueError:
            obj = None
        if type(obj) is not dict:
            return objects, errors.BackendStreamError("Ollama sent a malformed line")
        objects.append(obj)
    return objects, None


def translate_transport_error(
    exc: httpx.HTTPError | _http1.UpstreamError, base_url: str, *, started: bool
) -> Exception:
    """The one place transport failures (httpx's, or the generation pool's) become llmserve
    errors."""
    where = f" at {base_url}" if base_url else ""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | _http1.UpstreamConnectError):
        return errors.BackendUnavailableError(
            f"cannot connect to Ollama{where}: {exc or 'refused'}"
        )
    if isinstance(exc, httpx.TimeoutException | _http1.UpstreamTimeout):
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
