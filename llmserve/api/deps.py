"""FastAPI dependencies: the runtime and its services, taken from ``app.state``.

All ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop
per request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from llmserve.runtime import Runtime
from llmserve.services.generation import GenerationService
from llmserve.services.models import ModelService


def runtime_of(request: Request) -> Runtime:
    """For the generation routes, which skip dependency injection: FastAPI's dependency
    resolution was a tenth of a request's CPU there (issue 8's profile)."""
    runtime: Runtime = request.app.state.runtime  # set by the app's lifespan
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def get_generation(request: Request) -> GenerationService:
    return runtime_of(request).generation


async def get_models(request: Request) -> ModelService:
    return runtime_of(request).models


async def get_actor(request: Request) -> str:
    """Who is acting, for audit rows: the API key's name, or the client's address."""
    principal = request.scope.get("state", {}).get("principal")
    if principal is not None:
        return f"key:{principal.name}"
    client = request.client.host if request.client else "unknown"
    return f"anonymous@{client}"


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
ModelsDep = Annotated[ModelService, Depends(get_models)]
ActorDep = Annotated[str, Depends(get_actor)]
