"""llama.cpp in-process: importing it, loading a GGUF, building the prompt, the token loop.

``llama_cpp`` is imported lazily (it is an optional extra). :class:`Engine` holds the one loaded
model; it is touched only from the backend's single worker thread, which is what serialises
loads and generations without any lock on the event loop.
"""

from __future__ import annotations

import codecs
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
from llmserve.domain import GenerationRequest

log = logging.getLogger(__name__)
native_log = logging.getLogger("llmserve.llama_cpp")

PREFILL_CHUNK = 128  # prompt tokens evaluated between two looks at the cancel flag
GEMMA_USER = "<start_of_turn>user\n"
GEMMA_MODEL = "<end_of_turn>\n<start_of_turn>model\n"

# Ollama's defaults, so that switching LLM_BACKEND does not change how answers read.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40
DEFAULT_REPEAT_PENALTY = 1.1

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

    @llama_cpp.llama_log_callback
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
    original = bindings.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _load_lock:
        bindings.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


def load_llama(path: Path, *, n_ctx: int, n_threads: int, extra_buffers: bool | None = None) -> Any:
    """A ``llama_cpp.Llama`` for ``path``, loaded the way the embedded backend loads it.

    Public so that benchmarks compare llmserve with llama.cpp loaded identically.
    """
    llama_cpp = import_llama_cpp()
    try:
        with extra_buffer_types(extra_buffers):
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
    except (ValueError, RuntimeError, OSError) as exc:
        raise errors.BackendError(f"llama.cpp cannot load {path.name}: {exc}") from exc


class Engine:
    """The one loaded model. Every method runs on the backend's worker thread."""

    def __init__(self, *, n_ctx: int, n_threads: int, extra_buffers: bool | None) -> None:
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.extra_buffers = extra_buffers
        self.llama: Any = None
        self.path: Path | None = None
        self._prompt: PromptBuilder | None = None

    def load(self, path: Path) -> None:
        if self.path == path and self.llama is not None:
            return
        self.unload()
        if not path.is_file():
            raise errors.ModelNotFoundError(f"model file {path} no longer exists")
        started = time.perf_counter()
        self.llama = load_llama(
            path, n_ctx=self.n_ctx, n_threads=self.n_threads, extra_buffers=self.extra_buffers
        )
        self.path = path
        self._prompt = PromptBuilder(self.llama, self.llama.metadata.get("tokenizer.chat_template"))
        log.info("loaded %s in %.2f s", path.name, time.perf_counter() - started)

    def unload(self, path: Path | None = None) -> None:
        """Free the loaded model (only if it is ``path``, when given)."""
        if self.llama is None or (path is not None and path != self.path):
            return
        self.llama.close()
        self.llama, self.path, self._prompt = None, None, None

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        assert self._prompt is not None, "load() first"
        return self._prompt.tokens(request)


class PromptBuilder:
    """The model's chat template, or Gemma's turn format when the GGUF carries none."""

    def __init__(self, llama: Any, template: str | None) -> None:
        self._llama = llama
        self._formatter = _jinja_formatter(llama, template) if template else None

    def tokens(self, request: GenerationRequest) -> list[int]:
        if self._formatter is not None:
            return self._templated(request)
        # Gemma has no system role: the system prompt opens the user turn. The user's text is
        # tokenized without special tokens so that it cannot close the turn itself.
        text = request.prompt if not request.system else f"{request.system}\n\n{request.prompt}"
        tokenize = self._llama.tokenize
        return (
            tokenize(GEMMA_USER.encode(), add_bos=True, special=True)
            + tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
            + tokenize(GEMMA_MODEL.encode(), add_bos=False, special=True)
        )

    def _templated(self, request: GenerationRequest) -> list[int]:
        user = {"role": "user", "content": request.prompt}
        attempts = [[user]]
        if request.system:
            merged = {"role": "user", "content": f"{request.system}\n\n{request.prompt}"}
            # Some templates refuse a system role (raise_exception); merge it into the turn.
            attempts = [[{"role": "system", "content": request.system}, user], [merged]]
        problem: Exception | None = None
        for messages in attempts:
            try:
                rendered = self._formatter(messages=messages).prompt  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - jinja2 raises anything a template does
                problem = exc
                continue
            # Templates write the BOS token themselves, as llama-cpp-python assumes.
            return self._llama.tokenize(
                rendered.encode("utf-8", "replace"), add_bos=False, special=True
            )
        raise errors.BackendError(f"the model's chat template failed: {problem}")


def _jinja_formatter(llama: Any, template: str) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llama_cpp = import_llama_cpp()
    vocab = llama_cpp.llama_model_get_vocab(llama.model)

    def text(token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")

    return Jinja2ChatFormatter(
        template=template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos())
    )


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
    llama: Any, tokens: list[int], request: GenerationRequest
) -> Generator[int, Any, None]:
    """``Llama.generate`` with the request's sampling options (Ollama's defaults otherwise)."""
    opts = request.options
    seed = random.getrandbits(32) if opts.seed is None else opts.seed & 0xFFFFFFFF
    llama.set_seed(seed)
    return llama.generate(
        tokens,
        temp=DEFAULT_TEMPERATURE if opts.temperature is None else opts.temperature,
        top_p=DEFAULT_TOP_P if opts.top_p is None else opts.top_p,
        top_k=DEFAULT_TOP_K if opts.top_k is None else opts.top_k,
        min_p=0.0,
        repeat_penalty=DEFAULT_REPEAT_PENALTY,
    )


def is_end_of_generation(llama: Any) -> Any:
    """A predicate for the model's end-of-generation tokens (EOS, ``<end_of_turn>``, ...)."""
    llama_cpp = import_llama_cpp()
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    return lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))


class TextDecoder:
    """Token bytes → text, holding back incomplete UTF-8 and anything that may start a stop."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """The text that is safe to emit now; sets ``stopped`` when a stop string appeared."""
        text = self._held + self._utf8.decode(data)
        if not self._stops:
            self._held = ""
            return text
        cut = min((i for i in (text.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return text[:cut]
        keep = max((_overlap(text, stop) for stop in self._stops), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        text, self._held = self._held + self._utf8.decode(b"", final=True), ""
        return text


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that is a beginning of ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
