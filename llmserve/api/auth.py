"""Authentication for every route but the public ones — deny by default.

``AuthMiddleware`` sits in front of the whole app, so a route added tomorrow is protected
without anyone remembering to. It reads ``Authorization: Bearer <key>`` or ``X-API-Key``,
authenticates against the in-memory key cache (no database trip) and leaves the
:class:`Principal` in ``scope["state"]["principal"]`` for the routes. Failures are 401 with
``WWW-Authenticate``, in OpenAI's error envelope on the ``/v1`` routes. Scope checks
(admin-only actions) are route dependencies: :func:`require_admin`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from llmserve import errors
from llmserve.api.errors import send_error
from llmserve.services.keys import Principal

#: Open without a key: probes, and the two paths Ollama's clients call before sending one
#: (``/`` says "Ollama is running", ``/api/version`` the version).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/", "/api/version"})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, public_paths: frozenset[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        key = _key_from(scope["headers"])
        keys = scope["app"].state.runtime.keys
        try:
            principal = await keys.authenticate(key)
        except errors.AuthenticationError as exc:
            await send_error(scope, send, exc)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _key_from(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


def principal_of(request: Request) -> Principal | None:
    """The authenticated key, or None when AUTH_REQUIRED=false."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    return principal


async def current_principal(request: Request) -> Principal | None:
    """Route dependency: :func:`principal_of`."""
    return principal_of(request)


async def require_admin(request: Request) -> None:
    """Route dependency: with auth on, only admin keys pass (403 otherwise)."""
    principal = request.scope.get("state", {}).get("principal")
    if request.app.state.settings.AUTH_REQUIRED and (principal is None or not principal.admin):
        raise errors.PermissionDeniedError("this action needs an admin API key")


PrincipalDep = Annotated[Principal | None, Depends(current_principal)]
AdminOnly = Depends(require_admin)
