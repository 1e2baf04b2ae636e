"""Rendering a page: one Jinja2 environment, autoescaping every value, and the context every page has."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from console import keys, security
from ops.render import size, when

TEMPLATES = Path(__file__).parent / "templates"
ENVIRONMENT = web.AppKey("templates", jinja2.Environment)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        # Every value is escaped unless a template says otherwise (none does).
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=when, size=_size, pretty=_pretty)
    return env


def _size(n: int | None) -> str:
    return "" if n is None else size(n)  # None: a body pruned from the archive


def _pretty(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return when(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return "" if value is None else str(value)


def render(template: str, request: web.Request, context: dict[str, Any], *, status: int = 200) -> web.Response:
    session = security.session_of(request)
    common = {"session": session, "csrf_field": security.CSRF_FIELD, "csrf": session.csrf, "path": request.path,
              "trusted_header": bool(request.app[keys.SETTINGS].console_user_header)}
    html = request.app[ENVIRONMENT].get_template(template).render({**common, **context})
    return web.Response(text=html, status=status, content_type="text/html")
