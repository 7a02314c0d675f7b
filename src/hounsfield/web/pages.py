"""The console's templates and page helper (Jinja2), shared by every console module."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def page(request: Request, name: str, status: int = 200, **context: object) -> Response:
    """Render ``name`` with the caller as ``user`` (the base template's header needs it)."""
    context.setdefault("user", getattr(request.state, "principal", None))
    return templates.TemplateResponse(request, name, context, status_code=status)
