"""The FastAPI application: ``/dicom-web`` (PS3.18), ``/api``, the console and ``/viewer/``.

:func:`create_app` builds it from settings and an open archive (``hounsfield web`` and
``hounsfield serve`` start it with uvicorn).  Errors are translated at this edge: a
:class:`~hounsfield.errors.HounsfieldError` becomes its HTTP status with a JSON body
``{"error": reason}`` (API/DICOMweb) or an HTML page (console; 401 redirects to the login).
Anything unexpected is logged and answered 500 without internals — and is a bug.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response

from hounsfield import __version__
from hounsfield.archive.archive import Archive
from hounsfield.config import Settings
from hounsfield.dicomweb.routes import router as dicomweb_router
from hounsfield.errors import HounsfieldError, Unauthenticated
from hounsfield.web import (api, console, destinations_web, jobs_web, models_api, models_console,
                            mpps_web, rules_web, ups_web, viewer, workitems_web)
from hounsfield.web.audit_log import AuditMiddleware, AuditWriter
from hounsfield.web.auth_gate import AuthGate
from hounsfield.web.auth import default_authenticators, ensure_demo_admin

log = logging.getLogger(__name__)
_MACHINE_PREFIXES = ("/api", "/dicom-web")
#: the only machine routes that need no credential
PUBLIC_PATHS = frozenset({"/api/health", "/api/auth/login"})


def _is_machine(request: Request) -> bool:
    return request.url.path.startswith(_MACHINE_PREFIXES)


def _error(request: Request, status: int, message: str,
           headers: dict[str, str] | None = None) -> Response:
    request.state.error = message[:500]
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="hounsfield"'}
    if _is_machine(request) or request.url.path.startswith("/viewer/") and "." in \
            request.url.path.rsplit("/", 1)[-1]:
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
    return console.templates.TemplateResponse(
        request, "error.html",
        {"status": status, "message": message, "user": getattr(request.state, "principal", None)},
        status_code=status, headers=headers)


def create_app(settings: Settings, archive: Archive) -> FastAPI:
    """The whole HTTP face of Hounsfield for ``archive`` (opened from ``settings``)."""
    writer = AuditWriter(archive)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            writer.stop()

    app = FastAPI(
        title="Hounsfield",
        version=__version__,
        description="DICOMweb (QIDO-RS, WADO-RS, STOW-RS, UPS-RS), users and audit API, console, OHIF.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.archive = archive
    app.state.audit = writer
    app.state.authenticators = default_authenticators(archive)
    ensure_demo_admin(archive)

    @app.exception_handler(HounsfieldError)
    async def hounsfield_error(request: Request, exc: HounsfieldError) -> Response:
        status = exc.http_status
        if status >= 500 and not isinstance(exc, Unauthenticated):
            log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc.reason)
        return _error(request, status, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(request, 400, "bad request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail),
                      dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(request, 500, f"internal error ({type(exc).__name__}); see the server log")

    app.include_router(dicomweb_router)
    app.include_router(ups_web.router)
    app.include_router(api.router)
    app.include_router(jobs_web.api)
    app.include_router(jobs_web.pages)
    app.include_router(rules_web.api)
    app.include_router(rules_web.pages)
    app.include_router(destinations_web.api)
    app.include_router(destinations_web.pages)
    app.include_router(mpps_web.api)
    app.include_router(mpps_web.pages)
    app.include_router(workitems_web.api)
    app.include_router(workitems_web.pages)
    app.include_router(models_api.router)
    app.include_router(models_console.router)
    app.include_router(viewer.router)
    app.include_router(console.router)
    app.add_middleware(AuthGate, authenticators=app.state.authenticators,
                       prefixes=_MACHINE_PREFIXES, allow=PUBLIC_PATHS)
    app.add_middleware(AuditMiddleware, writer=writer)  # outermost: audits the 401s too
    return app
