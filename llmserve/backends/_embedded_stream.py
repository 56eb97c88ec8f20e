"""One embedded generation: the token loop on the worker thread and the stream the service reads.

The worker pushes text fragments, then one end or failure item, into an ``asyncio.Queue`` with
``loop.call_soon_threadsafe``. Cancellation is a ``threading.Event`` that the loop looks at
between two tokens (and between two prompt chunks), so ``aclose()`` stops the engine within
one token's time and then waits for the worker to be done with the model.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from llmserve import errors
from llmserve.backends._embedded_engine import (
    Engine,
    is_end_of_generation,
    prefill,
    sample_tokens,
)
from llmserve.backends._embedded_plan import Plan
from llmserve.backends.base import PrefetchingStream
from llmserve.domain import GenerationResult, Usage

log = logging.getLogger(__name__)

#: Without ``max_tokens`` a small base model may ramble until its context is full (4096 tokens,
#: minutes on a CPU); an unbounded request gets this many at most.
DEFAULT_MAX_TOKENS = 512

STOP_WAIT_S = 5.0  # the longest aclose() waits for the worker; one token takes milliseconds


@dataclass(slots=True)
class _End:
    result: GenerationResult


@dataclass(slots=True)
class _Failed:
    error: errors.LlmserveError


_Item = str | _End | _Failed


class GenerationJob:
    """The worker side: runs once on the backend's worker thread."""

    def __init__(
        self,
        engine: Engine,
        path: Path,
        plan: Plan,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[_Item],
    ) -> None:
        self._engine = engine
        self._path = path
        self._plan = plan
        self._loop = loop
        self._queue = queue
        self._state_lock = threading.Lock()
        self._started = False
        self._abort_reason: errors.LlmserveError | None = None
        self._emitted = False
        self.cancelled = threading.Event()

    def cancel(self, reason: errors.LlmserveError | None = None) -> bool:
        """Ask the worker to stop. Returns True when the job had not started (it never will)."""
        with self._state_lock:
            if reason is not None and self._abort_reason is None:
                self._abort_reason = reason
            self.cancelled.set()
            return not self._started

    def run(self) -> None:
        with self._state_lock:
            self._started = True
            if self.cancelled.is_set():
                self._finish_cancelled(None)
                return
        try:
            self._generate()
        except errors.LlmserveError as exc:
            self._emit(_Failed(exc))
        except Exception as exc:  # anything llama.cpp raises becomes ours
            log.exception("the embedded generation failed")
            if self._emitted:
                self._emit(_Failed(errors.BackendStreamError(f"llama.cpp failed: {exc!r}")))
            else:
                self._emit(_Failed(errors.BackendError(f"llama.cpp failed: {exc!r}")))

    def _generate(self) -> None:
        engine, plan, cancelled = self._engine, self._plan, self.cancelled
        options = plan.request.options
        engine.load(self._path)
        llama = engine.llama
        prompt = engine.prompt_tokens(plan.request)
        window = min(plan.window, llama.n_ctx())
        room = window - len(prompt)
        if room <= 0:
            raise errors.PromptTooLargeError(
                f"the prompt is {len(prompt)} tokens; the model's context holds {window}"
            )
        limit = min(options.max_tokens or DEFAULT_MAX_TOKENS, room)
        if not prefill(llama, prompt, cancelled):
            self._finish_cancelled(Usage(len(prompt), 0))
            return
        is_eog = is_end_of_generation(llama)
        decoder = TextDecoder(options.stop)
        detokenize = llama.detokenize
        produced, done_reason = 0, "length"
        tokens = sample_tokens(llama, prompt, options, plan.grammar)
        try:
            for token in tokens:
                if cancelled.is_set():
                    self._finish_cancelled(Usage(len(prompt), produced))
                    return
                if is_eog(token):
                    done_reason = "stop"
                    break
                produced += 1
                text = decoder.feed(detokenize([token]))
                if text:
                    self._emit(text)
                if decoder.matched is not None:
                    done_reason = "stop"
                    break
                if produced >= limit:
                    break
        finally:
            tokens.close()  # leaves llama.cpp's generator at once
        if decoder.matched is None and (tail := decoder.flush()):
            self._emit(tail)
        usage = Usage(len(prompt), produced)
        self._emit(_End(GenerationResult(done_reason, usage, stop_sequence=decoder.matched)))

    def _finish_cancelled(self, usage: Usage | None) -> None:
        if self._abort_reason is not None:
            self._emit(_Failed(self._abort_reason))
        else:
            self._emit(_End(GenerationResult("cancelled", usage or Usage())))

    def _emit(self, item: _Item) -> None:
        if isinstance(item, str):
            self._emitted = True
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.cancelled.set()


class EmbeddedStream(PrefetchingStream):
    """The service's side of one generation (see ``backends/base.py``)."""

    def __init__(
        self, job: GenerationJob, queue: asyncio.Queue[_Item], done: asyncio.Future[None]
    ) -> None:
        self._job = job
        self._queue = queue
        self._done = done
        self._finished = False
        self.result: GenerationResult | None = None
        self.tokens_received = 0

    @property
    def worker_done(self) -> bool:
        """True once the worker thread has left this generation."""
        return self._done.done()

    async def _pieces(self) -> AsyncIterator[str]:
        queue = self._queue
        while not self._finished:
            item = await queue.get()
            if isinstance(item, str):
                self.tokens_received += 1
                yield item
            elif isinstance(item, _End):
                self._finished = True
                self.result = item.result
            else:
                self._finished = True
                raise item.error

    async def aclose(self) -> None:
        """Stop the worker and wait (bounded) until it has let go of the model. Idempotent."""
        if self._job.cancel():
            return  # still queued behind another generation: it will skip itself
        if self._done.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._done), STOP_WAIT_S)
        except TimeoutError:
            log.warning("the embedded engine did not stop within %.0f s", STOP_WAIT_S)
        except Exception:  # the job reports its errors through the queue
            log.debug("the embedded worker ended with an error", exc_info=True)


class TextDecoder:
    """Token bytes → text, holding back incomplete UTF-8 and anything that may start a stop."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        #: The stop string that appeared (the text ends before it); None until one does.
        self.matched: str | None = None

    def feed(self, data: bytes) -> str:
        """The text that is safe to emit now; sets ``matched`` when a stop string appeared."""
        text = self._held + self._utf8.decode(data)
        if not self._stops:
            self._held = ""
            return text
        # The earliest match wins; of two starting at the same place, the shorter one, which
        # is the one a token-by-token arrival completes first.
        found = [(i, len(stop), stop) for stop in self._stops if (i := text.find(stop)) >= 0]
        if found:
            cut, _, self.matched = min(found)
            self._held = ""
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
