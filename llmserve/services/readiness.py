"""Readiness checks: database, schema at head, backend answers, active model installed; and,
with several backend servers, each server's state."""

from __future__ import annotations

import asyncio

from llmserve import errors
from llmserve.backends.pool import BackendPool, describe_servers
from llmserve.db import migrate, repositories
from llmserve.runtime import Runtime
from llmserve.services.models import is_installed


def _database_checks(runtime: Runtime) -> tuple[str, str]:
    try:
        with runtime.sessions() as session:
            repositories.ping(session)
            revision = repositories.schema_revision(session)
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready", with its reason
        return f"unavailable: {exc.__class__.__name__}", "unknown"
    head = migrate.head_revision()
    if revision == head:
        return "ok", "ok"
    return "ok", f"at {revision or 'nothing'}, expected {head}: run `llmserve migrate`"


async def check_readiness(runtime: Runtime, timeout_s: float = 5.0) -> dict[str, str]:
    database, schema = await asyncio.to_thread(_database_checks, runtime)
    checks = {"database": database, "schema": schema, "backend": "ok", "model": "ok"}
    if runtime.policy is not None:
        checks["policy"] = runtime.policy.check(database_up=database == "ok")
    try:
        async with asyncio.timeout(timeout_s):
            models = await runtime.backend.list_models()
    except TimeoutError:
        checks["backend"] = "timeout"
        checks["model"] = "unknown"
        return checks
    except errors.LlmserveError as exc:
        checks["backend"] = f"unavailable: {exc.detail}"
        checks["model"] = "unknown"
        return checks
    active = runtime.active_model.current
    if not is_installed(active, models):
        checks["model"] = f"active model '{active}' is not installed"
    return checks


def backend_servers(runtime: Runtime) -> dict[str, dict[str, object]] | None:
    """Several backend servers: each one (by its base URL as configured) with its state,
    in-flight generations and errors, as this process sees them; None for one server."""
    backend = runtime.backend
    if not isinstance(backend, BackendPool):
        return None
    return {
        server.url: {
            key: value
            for key, value in server.describe().items()
            if key in ("status", "in_flight", "errors", "models")
        }
        for server in backend.servers
    }


async def backends_view(runtime: Runtime) -> list[dict[str, object]]:
    """Every backend server in full (health, version, models, loaded models, in-flight,
    generations, errors, failovers): the pool's view, or one server probed now."""
    settings = runtime.settings
    servers = await describe_servers(
        runtime.backend, settings.backend_urls, settings.BACKEND_CONNECT_TIMEOUT_S + 5.0
    )
    if not isinstance(runtime.backend, BackendPool) and len(servers) == 1:
        servers[0]["in_flight"] = runtime.generation.admission.running
    return servers
