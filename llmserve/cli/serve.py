"""``llmserve serve``: run the API under uvicorn.

Shutdown (SIGTERM) is uvicorn's: stop accepting, wait up to ``SHUTDOWN_GRACE_S`` for running
responses, cancel the rest; ``api/drain.py`` then holds the app's own shutdown until the
cancelled requests have closed their upstream request and logged their row.

Everything that would stop the app's startup and that a setting can cause (a malformed value, an
engine or model file the chosen backend needs but this installation lacks, a SQLite folder this
user cannot write) is checked before uvicorn starts: one line naming the variable and exit 2, not
a traceback and uvicorn's exit 3 (``_startup.py``).
"""

from __future__ import annotations

import signal
from types import FrameType

import typer

from llmserve.cli._run import configure_logging
from llmserve.cli._startup import startup_settings


def serve(
    host: str = typer.Option(None, help="Address to bind.", show_default="HOST_BIND_IP"),
    port: int = typer.Option(None, help="Port.", show_default="PORT, 8000"),
    reload: bool = typer.Option(False, "--reload", help="Restart on code changes (development)."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
) -> None:
    """Run the HTTP API."""
    import uvicorn

    settings = startup_settings(backend=True)
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal; a clean shutdown
    # should exit 0, so the re-raised signal ends the process with SystemExit(0).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "llmserve.api.app:app_from_env",
        factory=True,
        host=host or settings.HOST_BIND_IP,
        port=port or settings.PORT,
        reload=reload,
        workers=None if reload else workers,
        log_level=settings.LOG_LEVEL.lower(),
        access_log=False,
        log_config=None,  # uvicorn's loggers use ours (text or JSON, with request ids)
        # uvicorn annotates it int but hands it to asyncio.wait_for, which takes a float
        timeout_graceful_shutdown=settings.SHUTDOWN_GRACE_S,  # type: ignore[arg-type]  # float ok
    )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)
