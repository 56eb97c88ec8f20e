"""The Ollama double's state: installed models, the upstream registry, scripts and records.

Tests script and inspect it from their own thread while the server thread answers requests, so
every read and write goes through one ``threading.Lock`` (with a ``Condition`` for waiting on
cancellations). Handlers never hold the lock across an ``await``.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import datetime

from tests.fakes.ollama_names import ModelName, parse_model_name
from tests.fakes.ollama_records import (
    DEFAULT_CAPABILITIES,
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_SIZE,
    CreateRecord,
    EmbedRecord,
    GenerationRecord,
    ModelEntry,
    PullRecord,
    RecordedRequest,
    Script,
)
from tests.fakes.ollama_wire import rfc3339

DEFAULT_KEEP_ALIVE_S = 300.0
_FOREVER_S = 9_000_000_000.0  # Ollama's "negative keep_alive" is ~292 years away
_TIMESTAMP = re.compile(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch for an RFC 3339 timestamp with up to 9 fractional digits."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    base, fraction, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _parse(raw: str) -> ModelName:
    name = parse_model_name(raw)
    if name is None:
        raise ValueError(f"invalid model name: {raw!r}")
    return name


class DoubleState:
    """Thread-safe state shared by the test thread and the double's server thread."""

    def __init__(
        self,
        models: Iterable[str] = (),
        *,
        version: str = "0.12.0",
        registry: Iterable[str] = (),
        pull_delay_s: float = 0.0,
        host_check: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._cancel_seen = threading.Condition(self._lock)
        self.version = version
        self.pull_delay_s = self._initial_pull_delay_s = pull_delay_s
        self.host_check = host_check
        self._models: dict[str, ModelEntry] = {}
        self._registry: dict[str, ModelEntry] = {}
        self._initial_registry = list(registry)
        self._scripts: deque[Script] = deque()
        self._default_script = Script()
        self._requests: list[RecordedRequest] = []
        self._generations: list[GenerationRecord] = []
        self._pulls: list[PullRecord] = []
        self._creates: list[CreateRecord] = []
        self._blobs: set[str] = set()  # digests of the layers /api/create has written
        self._embeddings: list[EmbedRecord] = []
        self._cancelled: list[GenerationRecord] = []
        self._cancelled_pulls: list[PullRecord] = []
        self._cancel_cursor = 0
        self._pull_cancel_cursor = 0
        self._loaded: dict[str, tuple[ModelEntry, float]] = {}
        self._last_modified_ns = 0
        for name in models:
            self.add_model(name)
        for name in self._initial_registry:
            self.add_registry_model(name)

    # -- installed models and the registry -------------------------------------------------------

    def _now_modified(self) -> str:
        """A fresh ``modified_at``, strictly later than the previous one (stable tags order)."""
        self._last_modified_ns = max(time.time_ns(), self._last_modified_ns + 1_000)
        return rfc3339(self._last_modified_ns)

    def add_model(
        self,
        name: str,
        size: int = DEFAULT_SIZE,
        digest: str | None = None,
        modified_at: str | None = None,
        *,
        family: str | None = None,
        parameter_size: str | None = None,
        quantization_level: str = "Q4_K_M",
        capabilities: Iterable[str] = DEFAULT_CAPABILITIES,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    ) -> str:
        """Install ``name`` (replacing a case-insensitive match); return its display name.

        ``modified_at`` defaults to now, later than every earlier default, so the newest model
        comes first in ``/api/tags``. ``capabilities`` defaults to ``("completion", "tools")``:
        add ``"thinking"``/``"insert"`` to allow ``think``/``suffix`` requests, ``"vision"`` or
        ``"embedding"`` to have ``/api/show`` list them; leave out ``"tools"`` to have chats that
        offer tools refused, ``"completion"`` to have chat and generate refused (an embedding
        model). ``embedding_dim`` is the length of the model's embedding vectors. Raises
        ``ValueError`` for a name Ollama would reject.
        """
        parsed = _parse(name)
        if modified_at is not None:
            timestamp_ns(modified_at)  # validate early
        with self._lock:
            entry = ModelEntry.build(
                parsed,
                size=size,
                digest=digest,
                modified_at=modified_at or self._now_modified(),
                family=family,
                parameter_size=parameter_size,
                quantization_level=quantization_level,
                capabilities=tuple(capabilities),
                embedding_dim=embedding_dim,
            )
            self._models[parsed.key] = entry
        return entry.display

    def remove_model(self, name: str) -> bool:
        """Uninstall ``name``; return whether it was installed."""
        parsed = parse_model_name(name)
        if parsed is None:
            return False
        with self._lock:
            self._loaded.pop(parsed.key, None)
            return self._models.pop(parsed.key, None) is not None

    @property
    def models(self) -> list[str]:
        """Display names of the installed models, newest first (the ``/api/tags`` order)."""
        return [entry.display for entry in self.installed()]

    def add_registry_model(
        self,
        name: str,
        size: int = DEFAULT_SIZE,
        digest: str | None = None,
        *,
        capabilities: Iterable[str] = DEFAULT_CAPABILITIES,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    ) -> str:
        """Make ``name`` pullable. Installed models are pullable too (they came from upstream).
        A pull installs it with these ``capabilities`` and ``embedding_dim``."""
        parsed = _parse(name)
        with self._lock:
            entry = ModelEntry.build(
                parsed,
                size=size,
                digest=digest,
                modified_at=rfc3339(),
                capabilities=tuple(capabilities),
                embedding_dim=embedding_dim,
            )
            self._registry[parsed.key] = entry
        return entry.display

    @property
    def registry(self) -> set[str]:
        """Display names of the models that exist upstream (besides the installed ones)."""
        with self._lock:
            return {entry.display for entry in self._registry.values()}

    @registry.setter
    def registry(self, names: Iterable[str]) -> None:
        """Replace the upstream models (default size) with ``names``."""
        with self._lock:
            self._registry.clear()
        for name in names:
            self.add_registry_model(name)

    # -- scripts --------------------------------------------------------------------------------

    def enqueue(self, *scripts: Script) -> None:
        """Queue scripts for the next generate/chat requests, first in, first out."""
        with self._lock:
            self._scripts.extend(scripts)

    @property
    def default_script(self) -> Script:
        with self._lock:
            return self._default_script

    @default_script.setter
    def default_script(self, script: Script) -> None:
        with self._lock:
            self._default_script = script

    @property
    def pending_scripts(self) -> int:
        with self._lock:
            return len(self._scripts)

    # -- records --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def generations(self) -> list[GenerationRecord]:
        with self._lock:
            return list(self._generations)

    @property
    def pulls(self) -> list[PullRecord]:
        with self._lock:
            return list(self._pulls)

    @property
    def creates(self) -> list[CreateRecord]:
        """``/api/create`` requests that got past validation, oldest first."""
        with self._lock:
            return list(self._creates)

    @property
    def embeddings(self) -> list[EmbedRecord]:
        """Answered ``/api/embed`` and ``/api/embeddings`` requests, oldest first."""
        with self._lock:
            return list(self._embeddings)

    @property
    def loaded(self) -> list[str]:
        """Display names of the models ``/api/ps`` lists."""
        return [entry.display for entry, _ in self.loaded_models()]

    def wait_for_cancel(self, timeout: float = 2.0) -> GenerationRecord:
        """Block until a generation is cancelled by its client; return the oldest one not yet
        returned by an earlier call. Raises ``TimeoutError`` after ``timeout`` seconds."""
        with self._cancel_seen:
            if not self._cancel_seen.wait_for(
                lambda: self._cancel_cursor < len(self._cancelled), timeout
            ):
                raise TimeoutError(f"no generation was cancelled within {timeout} s")
            record = self._cancelled[self._cancel_cursor]
            self._cancel_cursor += 1
            return record

    def wait_for_pull_cancel(self, timeout: float = 2.0) -> PullRecord:
        """Like :meth:`wait_for_cancel`, for pulls whose client left before the end."""
        with self._cancel_seen:
            if not self._cancel_seen.wait_for(
                lambda: self._pull_cancel_cursor < len(self._cancelled_pulls), timeout
            ):
                raise TimeoutError(f"no pull was cancelled within {timeout} s")
            record = self._cancelled_pulls[self._pull_cancel_cursor]
            self._pull_cancel_cursor += 1
            return record

    def reset(self) -> None:
        """Forget scripts, records and loaded runners; restore the default script and the pull
        delay and registry given at construction. Installed models are kept."""
        with self._lock:
            self._scripts.clear()
            self._default_script = Script()
            self._requests.clear()
            self._generations.clear()
            self._pulls.clear()
            self._creates.clear()
            self._blobs.clear()
            self._embeddings.clear()
            self._cancelled.clear()
            self._cancelled_pulls.clear()
            self._cancel_cursor = self._pull_cancel_cursor = 0
            self._loaded.clear()
            self._registry.clear()
            self.pull_delay_s = self._initial_pull_delay_s
        for name in self._initial_registry:
            self.add_registry_model(name)

    # -- used by the request handlers (server thread) -------------------------------------------

    def installed(self) -> list[ModelEntry]:
        """Installed models, newest ``modified_at`` first."""
        with self._lock:
            entries = list(self._models.values())
        return sorted(entries, key=lambda e: timestamp_ns(e.modified_at), reverse=True)

    def find_model(self, raw: str) -> ModelEntry | None:
        """The installed model ``raw`` names (case-insensitive, ``:latest`` implied)."""
        parsed = parse_model_name(raw)
        if parsed is None:
            return None
        with self._lock:
            return self._models.get(parsed.key)

    def pullable(self, raw: str) -> ModelEntry | None:
        """The upstream model ``raw`` names, if the registry (or the local store) has it."""
        parsed = parse_model_name(raw)
        if parsed is None:
            return None
        with self._lock:
            return self._registry.get(parsed.key) or self._models.get(parsed.key)

    def install(self, raw: str, source: ModelEntry) -> None:
        """Finish a pull: install ``source`` under the requested name (kept spelling if present)."""
        parsed = _parse(raw)
        with self._lock:
            existing = self._models.get(parsed.key)
            entry = copy.copy(source)
            entry.name = existing.name if existing else parsed
            entry.modified_at = self._now_modified()
            self._models[parsed.key] = entry

    def install_created(self, raw: str, entry: ModelEntry) -> None:
        """Finish a create: install ``entry`` as ``raw`` (an installed spelling is kept)."""
        parsed = _parse(raw)
        with self._lock:
            existing = self._models.get(parsed.key)
            entry.name = existing.name if existing else parsed
            entry.modified_at = self._now_modified()
            self._models[parsed.key] = entry

    def add_blob(self, digest: str) -> bool:
        """Record a layer written by ``/api/create``; return whether it was there already."""
        with self._lock:
            known = digest in self._blobs
            self._blobs.add(digest)
            return known

    def copy_model(self, source: str, destination: str) -> bool:
        """``/api/copy``: False when ``source`` is not installed."""
        src, dst = _parse(source), _parse(destination)
        with self._lock:
            entry = self._models.get(src.key)
            if entry is None:
                return False
            clone = copy.copy(entry)
            clone.name = dst
            clone.modified_at = self._now_modified()
            self._models[dst.key] = clone
            return True

    def next_script(self) -> Script:
        """Pop the next queued script, or a copy of the default one."""
        with self._lock:
            if self._scripts:
                return self._scripts.popleft()
            return copy.deepcopy(self._default_script)

    def record_request(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def begin_generation(self, record: GenerationRecord) -> None:
        with self._lock:
            self._generations.append(record)

    def record_embedding(self, record: EmbedRecord) -> None:
        with self._lock:
            self._embeddings.append(record)

    def begin_pull(self, record: PullRecord) -> None:
        with self._lock:
            self._pulls.append(record)

    def begin_create(self, record: CreateRecord) -> None:
        with self._lock:
            self._creates.append(record)

    def mark_cancelled(self, record: GenerationRecord | PullRecord | CreateRecord) -> None:
        """The client left before the end: record it and wake :meth:`wait_for_cancel`."""
        with self._cancel_seen:
            record.cancelled = True
            if isinstance(record, GenerationRecord):
                self._cancelled.append(record)
            elif isinstance(record, PullRecord):
                self._cancelled_pulls.append(record)
            self._cancel_seen.notify_all()

    def mark_loaded(self, entry: ModelEntry, keep_alive_s: float | None) -> None:
        """A request used ``entry``: it stays in ``/api/ps`` for ``keep_alive`` (0 unloads)."""
        seconds = DEFAULT_KEEP_ALIVE_S if keep_alive_s is None else keep_alive_s
        with self._lock:
            if seconds == 0:
                self._loaded.pop(entry.name.key, None)
            else:
                expires = time.time() + (_FOREVER_S if seconds < 0 else seconds)
                self._loaded[entry.name.key] = (entry, expires)

    def loaded_models(self) -> list[tuple[ModelEntry, float]]:
        """Loaded models with their expiry (epoch seconds), longest remaining first."""
        now = time.time()
        with self._lock:
            for key in [k for k, (_, expires) in self._loaded.items() if expires <= now]:
                del self._loaded[key]
            items = list(self._loaded.values())
        return sorted(items, key=lambda item: item[1], reverse=True)
