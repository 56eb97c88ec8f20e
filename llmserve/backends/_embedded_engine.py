"""llama.cpp in-process: importing it, loading a GGUF, the token loop, embeddings.

``llama_cpp`` is imported lazily (it is an optional extra). :class:`Engine` holds the one loaded
model file: its generation instance and, once asked for, its embedding instance. It is touched
only from the backend's single worker thread, which is what serialises loads, generations and
embeddings without any lock on the event loop.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import random
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from llmserve import errors
from llmserve.backends._embedded_files import INSTALL_HINT
from llmserve.backends._embedded_grammar import constrained_tokens
from llmserve.backends._embedded_prompt import PromptBuilder
from llmserve.backends._embedded_vectors import EMBEDDING_CONTEXT
from llmserve.domain import GenerationOptions, GenerationRequest

log = logging.getLogger(__name__)
native_log = logging.getLogger("llmserve.llama_cpp")

PREFILL_CHUNK = 128  # prompt tokens evaluated between two looks at the cancel flag

# Ollama's defaults, so that switching LLM_BACKEND does not change how answers read.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_PRESENCE_PENALTY = 0.0
DEFAULT_FREQUENCY_PENALTY = 0.0

_import_lock = threading.Lock()
_load_lock = threading.Lock()
_log_callback: Any = None
# ggml_log_level (NONE, DEBUG, INFO, WARN, ERROR; 5 continues the previous line) → logging.
# Its INFO is a chatty load report and its warnings are advisory (e.g. "using full-size SWA
# cache" at every load of a Gemma 3), so both go one level down.
_NATIVE_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.INFO,
    4: logging.ERROR,
}


def import_llama_cpp() -> ModuleType:
    """``llama_cpp``, with its native log routed to :mod:`logging`; or ``NotSupportedError``."""
    global _log_callback
    try:
        import llama_cpp
    except ImportError:
        raise errors.NotSupportedError(
            f"the embedded backend needs llama-cpp-python: {INSTALL_HINT}"
        ) from None
    with _import_lock:
        if _log_callback is None:
            _log_callback = _route_native_log(llama_cpp)
    return llama_cpp


def _route_native_log(llama_cpp: ModuleType) -> Any:
    # llama-cpp-python's own callback print()s to stderr; ours goes through logging instead.
    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # a ctypes callback type
    def callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        levelno = last[0] if level == 5 else _NATIVE_LEVELS.get(level, logging.DEBUG)
        last[0] = levelno
        if native_log.isEnabledFor(levelno):
            message = text.decode("utf-8", "replace").rstrip()
            if message:
                native_log.log(levelno, "%s", message)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback  # kept referenced: llama.cpp holds a raw pointer to it


def amx_advertised(llama_cpp: ModuleType) -> bool:
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


@contextmanager
def extra_buffer_types(enabled: bool | None = None) -> Iterator[None]:
    """While active, ``llama_cpp.Llama(...)`` loads with or without llama.cpp's extra buffer types.

    ``None`` (auto) disables them when the CPU advertises AMX: this llama.cpp build's AMX
    kernels die with SIGILL (``tilezero``) on the very first multi-token batch on virtual
    machines that report AMX in CPUID (seen on the CI machine), taking the whole process with
    them. Without extra buffers llama.cpp uses its plain AVX-512/AVX2 kernels. The Llama class
    has no parameter for this, so the model-params factory is wrapped during the load.
    """
    llama_cpp = import_llama_cpp()
    if enabled is None:
        enabled = not amx_advertised(llama_cpp)
    if enabled:
        yield
        return
    bindings = importlib.import_module("llama_cpp.llama_cpp")
    factory = "llama_model_default_params"  # patched by name: a ctypes binding, not a variable
    original = getattr(bindings, factory)

    def without_extra_buffers() -> Any:
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _load_lock:
        setattr(bindings, factory, without_extra_buffers)
        try:
            yield
        finally:
            setattr(bindings, factory, original)


def load_llama(
    path: Path,
    *,
    n_ctx: int,
    n_threads: int,
    extra_buffers: bool | None = None,
    embedding: bool = False,
) -> Any:
    """A ``llama_cpp.Llama`` for ``path``, loaded the way the embedded backend loads it.

    ``embedding``: an instance that embeds (llama.cpp's embedding mode, mean pooling) instead
    of generating; it reads each input in one batch of up to ``n_ctx`` tokens, which a mean
    over the whole input needs. Public so that benchmarks compare llmserve with llama.cpp
    loaded identically.
    """
    llama_cpp = import_llama_cpp()
    extra: dict[str, Any] = {}
    if embedding:
        extra = {
            "embedding": True,
            "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            "n_batch": n_ctx,
            "n_ubatch": n_ctx,
        }
    try:
        with extra_buffer_types(extra_buffers):
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
                **extra,
            )
    except (ValueError, RuntimeError, OSError) as exc:
        raise errors.BackendError(f"llama.cpp cannot load {path.name}: {exc}") from exc


class Engine:
    """The one loaded model file. Every method runs on the backend's worker thread.

    A file has two llama.cpp instances, each loaded on first use: ``llama`` generates, and
    ``embedder`` embeds (llama.cpp's embedding mode is fixed when a context is made, so one
    instance cannot do both). Using another file unloads both instances of this one.
    """

    def __init__(self, *, n_ctx: int, n_threads: int, extra_buffers: bool | None) -> None:
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.extra_buffers = extra_buffers
        self.llama: Any = None
        self.embedder: Any = None
        self.path: Path | None = None
        self._prompt: PromptBuilder | None = None

    def load(self, path: Path) -> None:
        """Make ``self.llama`` the generation instance of ``path`` (loading it if needed)."""
        self._switch(path)
        if self.llama is not None:
            return
        started = time.perf_counter()
        self.llama = load_llama(
            path, n_ctx=self.n_ctx, n_threads=self.n_threads, extra_buffers=self.extra_buffers
        )
        self.path = path
        self._prompt = PromptBuilder(self.llama, self.llama.metadata.get("tokenizer.chat_template"))
        log.info("loaded %s in %.2f s", path.name, time.perf_counter() - started)

    def load_embedder(self, path: Path) -> Any:
        """The embedding instance of ``path`` (``self.embedder``, loaded if needed)."""
        self._switch(path)
        if self.embedder is None:
            started = time.perf_counter()
            self.embedder = load_llama(
                path,
                n_ctx=min(self.n_ctx, EMBEDDING_CONTEXT),
                n_threads=self.n_threads,
                extra_buffers=self.extra_buffers,
                embedding=True,
            )
            self.path = path
            log.info("loaded %s to embed in %.2f s", path.name, time.perf_counter() - started)
        return self.embedder

    def _switch(self, path: Path) -> None:
        if self.path != path:
            self.unload()
        if self.path is None and not path.is_file():
            raise errors.ModelNotFoundError(f"model file {path} no longer exists")

    def unload(self, path: Path | None = None) -> None:
        """Free the loaded model's instances (only if it is ``path``, when given)."""
        if self.path is None or (path is not None and path != self.path):
            return
        for instance in (self.llama, self.embedder):
            if instance is not None:
                instance.close()
        self.llama, self.embedder, self.path, self._prompt = None, None, None, None

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        assert self._prompt is not None, "load() first"
        return self._prompt.tokens(request)


def prefill(llama: Any, tokens: list[int], cancelled: threading.Event) -> bool:
    """Evaluate the prompt in chunks, looking at ``cancelled`` between them; False if cancelled.

    ``Llama.generate`` then finds the whole prompt in its cache and samples at once.
    """
    llama.reset()
    for start in range(0, len(tokens), PREFILL_CHUNK):
        if cancelled.is_set():
            return False
        llama.eval(tokens[start : start + PREFILL_CHUNK])
    return True


def sample_tokens(
    llama: Any, tokens: list[int], options: GenerationOptions, grammar: str | None = None
) -> Generator[int, Any, None]:
    """The tokens after ``tokens`` with the request's sampling options (Ollama's defaults
    otherwise): ``Llama.generate``, or under a GBNF ``grammar`` ``constrained_tokens``."""
    seed = random.getrandbits(32) if options.seed is None else options.seed & 0xFFFFFFFF
    llama.set_seed(seed)
    sampling = {
        "temp": _or(options.temperature, DEFAULT_TEMPERATURE),
        "top_p": _or(options.top_p, DEFAULT_TOP_P),
        "top_k": _or(options.top_k, DEFAULT_TOP_K),
        "min_p": 0.0,
        "repeat_penalty": _or(options.repeat_penalty, DEFAULT_REPEAT_PENALTY),
        "presence_penalty": _or(options.presence_penalty, DEFAULT_PRESENCE_PENALTY),
        "frequency_penalty": _or(options.frequency_penalty, DEFAULT_FREQUENCY_PENALTY),
    }
    if grammar is not None:
        return constrained_tokens(llama, tokens, grammar, sampling)
    generated: Generator[int, Any, None] = llama.generate(tokens, **sampling)
    return generated


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def is_end_of_generation(llama: Any) -> Any:
    """A predicate for the model's end-of-generation tokens (EOS, ``<end_of_turn>``, ...)."""
    llama_cpp = import_llama_cpp()
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    return lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
