"""``/health`` (liveness), ``/ready`` (readiness) and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmserve.api.auth import AdminOnly
from llmserve.api.deps import RuntimeDep
from llmserve.api.schemas import HealthResponse, ReadyResponse
from llmserve.services.readiness import backend_servers, backends_view, check_readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse)
async def health() -> dict[str, str]:
    """Liveness: 200 while the process runs. Touches nothing."""
    return {"status": "ok"}


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: database, schema, backend and active model all OK, else 503. With several
    backend servers, `backends` gives each one's state (by base URL)."""
    checks = await check_readiness(runtime)
    ok = all(value == "ok" for value in checks.values())
    body: dict[str, object] = {"status": "ready" if ok else "not ready", "checks": checks}
    servers = backend_servers(runtime)
    if servers is not None:
        body["backends"] = servers
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/v1/backends", dependencies=[AdminOnly])
async def backends(runtime: RuntimeDep) -> dict[str, object]:
    """The backend servers as this server sees them (admin keys): health, version, models,
    loaded models, in-flight generations, errors and failovers."""
    return {"backends": await backends_view(runtime)}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics: requests, generations, latency, tokens, queue, backend state."""
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
