"""``405 Method Not Allowed`` with the ``Allow`` header of the route a path belongs to.

Starlette answers 405 with the methods of the first route whose pattern matches the path, so
``OPTIONS /api/v1/models/switch/x`` said ``Allow: DELETE``: ``/api/v1/models/{name:path}``
matches it too. The route a path belongs to is the most specific of those that match: the
longest literal prefix before the first parameter (``/api/v1/models/switch/`` beats
``/api/v1/models/``); routes that share a path (``GET /`` and ``HEAD /``) are one resource, so
``Allow`` lists all their methods. Every method a route does not declare, ``OPTIONS``
included, gets this 405 (no CORS is configured, so there is no preflight to answer).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, compile_path

from llmserve.api.errors import face_of, framework_error_response


def allowed_methods(routes: Sequence[BaseRoute], path: str) -> list[str]:
    """The methods of the routes ``path`` belongs to, sorted; none when no route matches."""
    found: list[tuple[int, set[str]]] = []
    for route in iter_route_contexts(routes):
        template, methods = route.path, route.methods
        if template and methods and compile_path(template)[0].match(path):
            found.append((_literal_prefix(template), methods))
    if not found:
        return []
    specific = max(prefix for prefix, _ in found)
    return sorted({m for prefix, methods in found if prefix == specific for m in methods})


def _literal_prefix(template: str) -> int:
    return len(template.partition("{")[0])


def install(app: FastAPI) -> None:
    """Answer every 405 with the ``Allow`` of :func:`allowed_methods`, in the path's envelope."""

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        path = request.scope["path"]
        response = framework_error_response(exc, face=face_of(path))
        methods = allowed_methods(app.router.routes, path)
        if methods:
            response.headers["Allow"] = ", ".join(methods)
        return response

    app.add_exception_handler(405, method_not_allowed)
