"""The authentication gate for machine routes (``/api``, ``/dicom-web``).

Runs before routing and body parsing, so no request under a protected prefix reaches a handler
(or a body parser) without a valid credential; allow-listed paths pass through.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from hounsfield.errors import Unauthenticated


class AuthGate:
    """Pure ASGI middleware: requests under the protected prefixes need a valid credential
    before anything else runs (routing, body parsing); the principal is left in the request
    state for the route dependencies.  Allow-listed paths pass through."""

    def __init__(self, app: ASGIApp, authenticators: list, prefixes: tuple[str, ...],
                 allow: frozenset[str]) -> None:
        self.app = app
        self.authenticators = authenticators
        self.prefixes = prefixes
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefixes) or path in self.allow:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        conn = HTTPConnection(scope)
        try:
            principal = None
            for authenticator in self.authenticators:
                principal = await run_in_threadpool(authenticator.authenticate, conn)
                if principal is not None:
                    break
            if principal is None:
                raise Unauthenticated("authentication required: log in, or send "
                                      "'Authorization: Bearer <token>'")
        except Unauthenticated as exc:
            state["error"] = exc.reason
            response = JSONResponse({"error": exc.reason}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="hounsfield"'})
            await response(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)
