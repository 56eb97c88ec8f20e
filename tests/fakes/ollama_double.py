"""A faithful, scriptable Ollama HTTP test double, served by a real uvicorn on 127.0.0.1.

Usage::

    with OllamaDouble.running(models=["llama3.2"]) as double:
        double.enqueue(Script(tokens=["Hi", "!"], delay_s=0.05))
        ...  # point any client, in this process or another, at double.base_url
        record = double.generations[-1]

The server runs in a background thread with its own event loop, so the double works the same for
sync tests, async tests and subprocesses. The scripting and recording API lives on
:class:`~tests.fakes.ollama_state.DoubleState`; :class:`~tests.fakes.ollama_records.Script` says
how an answer goes (text, thinking, tool calls, JSON for ``format``, failures, timing).

Routes: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/pull``,
``/api/delete``, ``/api/copy``, ``/api/create`` (see :mod:`tests.fakes.ollama_create`),
``/api/generate``, ``/api/chat`` (messages, images, tools, ``format``; see
:mod:`tests.fakes.ollama_chat`), ``/api/embed`` and ``/api/embeddings`` (see
:mod:`tests.fakes.ollama_embed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn

from tests.fakes.ollama_app import OllamaApp
from tests.fakes.ollama_records import (
    CreateRecord,
    EmbedRecord,
    GenerationRecord,
    ModelEntry,
    PullRecord,
    RecordedRequest,
    Script,
)
from tests.fakes.ollama_state import DoubleState

__all__ = [
    "CreateRecord",
    "EmbedRecord",
    "GenerationRecord",
    "ModelEntry",
    "OllamaDouble",
    "PullRecord",
    "RecordedRequest",
    "Script",
    "run_ollama_double",
]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class OllamaDouble(DoubleState):
    """The double: :class:`DoubleState` plus a uvicorn server thread.

    Lifecycle: :meth:`start` returns once the port accepts connections; :meth:`stop` interrupts
    in-flight answers (their connections are cut, not recorded as client cancellations), stops
    uvicorn and joins the thread, normally in well under a second. :meth:`running` and ``with``
    do both.
    """

    def __init__(
        self,
        models: Iterable[str] = (),
        *,
        version: str = "0.12.0",
        registry: Iterable[str] = (),
        pull_delay_s: float = 0.0,
        host_check: bool = False,
    ) -> None:
        super().__init__(
            models,
            version=version,
            registry=registry,
            pull_delay_s=pull_delay_s,
            host_check=host_check,
        )
        self._app = OllamaApp(self)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None
        self._failure: BaseException | None = None
        self._down = False

    @classmethod
    @contextlib.contextmanager
    def running(cls, models: Iterable[str] = (), **options: Any) -> Iterator[OllamaDouble]:
        """Start a double for the ``with`` block and stop it afterwards."""
        double = cls(models, **options)
        double.start()
        try:
            yield double
        finally:
            double.stop()

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Ollama double is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (what ``OLLAMA_BASE_URL`` should be set to)."""
        return f"http://{HOST}:{self.port}"

    @property
    def is_down(self) -> bool:
        return self._down

    def start(self, timeout: float = 10.0) -> OllamaDouble:
        """Serve on a free port; return when it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the Ollama double is already running")
        config = uvicorn.Config(
            self._app,
            host=HOST,
            port=0,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # leave the process's logging configuration alone
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=0.5,
        )
        self._server = uvicorn.Server(config)
        self._failure = None
        self._app.refusing = False
        self._thread = threading.Thread(target=self._serve, name="ollama-double", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError("the Ollama double failed to start") from self._failure
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the Ollama double did not start within {timeout} s")
            time.sleep(0.005)
        self._port = int(self._server.servers[0].sockets[0].getsockname()[1])
        logger.debug("Ollama double listening on %s", self.base_url)
        return self

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # uvicorn raises SystemExit when it cannot bind
            self._failure = exc
            logger.exception("the Ollama double's server thread failed")

    async def _main(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def stop(self, timeout: float = 5.0) -> None:
        """Cut in-flight answers, stop uvicorn and join its thread. Idempotent."""
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        self._app.refusing = True
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may close meanwhile
                loop.call_soon_threadsafe(self._app.kill_all)
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("the Ollama double did not stop in %s s; forcing it", timeout)
            server.force_exit = True
            thread.join(timeout)
        self._thread = self._loop = None
        self._port = None
        self._down = False

    def set_down(self, down: bool = True) -> None:
        """Simulate Ollama not running (``down=True``): close the listening socket so new
        connections are refused, and cut every open connection, idle keep-alive ones included.
        ``set_down(False)`` listens again on the same port."""
        loop = self._loop
        if loop is None or self._port is None:
            raise RuntimeError("the Ollama double is not running")
        change = self._go_down() if down else self._go_up()
        asyncio.run_coroutine_threadsafe(change, loop).result(timeout=5)

    async def _go_down(self) -> None:
        assert self._server is not None
        if self._down:
            return
        self._down = True
        self._app.refusing = True
        for listener in self._server.servers:
            listener.close()
        self._app.kill_all()
        for connection in list(self._server.server_state.connections):
            connection.shutdown()  # idle ones close now; busy ones are cut by their handler
        for _ in range(100):  # let handlers cut their connections before we report "down"
            if not self._server.server_state.connections:
                break
            await asyncio.sleep(0.01)

    async def _go_up(self) -> None:
        server = self._server
        assert server is not None
        if not self._down:
            return
        config = server.config
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=server.server_state,
                app_state=server.lifespan.state,
                _loop=loop,
            )

        listener = await loop.create_server(
            protocol, host=HOST, port=self._port, backlog=config.backlog
        )
        server.servers.append(listener)
        self._app.refusing = False
        self._down = False


@contextlib.contextmanager
def run_ollama_double(models: Iterable[str] = (), **options: Any) -> Iterator[OllamaDouble]:
    """Same as :meth:`OllamaDouble.running`."""
    with OllamaDouble.running(models, **options) as double:
        yield double
