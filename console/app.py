"""The console's aiohttp application: resources, middlewares, templates, routes."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_session
from aiohttp import web

from console import actions, archive, audit, callbacks, drift, keys, letters, login, overview, security
from console.jobs import Jobs
from console.pages import ENVIRONMENT, environment
from console.previews import Previews
from console.queues import DeadLetterGlance
from console.sessions import DatabaseStorage, session_secret
from runtime.amqp import BrokerSession
from runtime.settings import Settings, SettingsError
from schemas import topology
from store.connection import create_pool

HERE = Path(__file__).parent

# aiohttp-session (2.12) keeps its objects under string keys of the request, which aiohttp now warns about on
# every request; nothing is wrong with that, so the warning is silenced for that module only.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")


def check_startable(settings: Settings) -> None:
    """SettingsError (exit status 2) unless people can log in: tokens, or a trusted proxy's header."""
    if settings.console_user_header:
        if not settings.trusted_proxies:
            raise SettingsError("FLOWSCRIBE_CONSOLE_USER_HEADER needs FLOWSCRIBE_TRUSTED_PROXIES: the proxies"
                               " whose header is believed")
    elif not settings.console_tokens:
        raise SettingsError("set FLOWSCRIBE_CONSOLE_TOKENS (name:role:token,...) or, behind an authenticating"
                           " proxy, FLOWSCRIBE_CONSOLE_USER_HEADER")


async def _database(app: web.Application) -> AsyncIterator[None]:
    # Custom plans always: the searches' filters are parameters, and a generic plan cannot know that a
    # content type or outcome is rare; it scans the whole ledger for one nobody sent (bench.console).
    async with create_pool(app[keys.SETTINGS].database_url, min_size=1, max_size=4,
                             server_settings={"plan_cache_mode": "force_custom_plan"}) as pool:
        app[keys.POOL] = pool
        yield


async def _broker(app: web.Application) -> AsyncIterator[None]:
    async with BrokerSession(app[keys.SETTINGS].amqp_url, "console", declare=topology.declare) as session:
        app[keys.BROKER] = session
        yield


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    app[keys.JOBS] = Jobs(finished=audit.on_job_finished(app))
    yield
    await app[keys.JOBS].close(app[keys.SETTINGS].shutdown_timeout)


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[keys.POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception:  # noqa: BLE001 - not ready, whatever the reason
        raise web.HTTPServiceUnavailable(text="database not reachable") from None
    if not request.app[keys.BROKER].ready:
        raise web.HTTPServiceUnavailable(text="broker not connected")
    return web.Response(text="ready")


# The files under static/, by name: a request names one of them or gets a 404. (aiohttp's static route answers
# a name longer than the file system takes with a 500.)
STATIC = {path.name: path for path in (HERE / "static").iterdir() if path.is_file()}


async def _static(request: web.Request) -> web.StreamResponse:
    path = STATIC.get(request.match_info["filename"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def create_app(settings: Settings) -> web.Application:
    storage = DatabaseStorage(session_secret(settings), keys.POOL)
    app = web.Application(middlewares=[
        security.headers, aiohttp_session.session_middleware(storage), security.authentication, security.csrf,
    ])
    app[keys.SETTINGS] = settings
    app[keys.SESSION_STORAGE] = storage
    app[keys.PREVIEWS] = Previews()
    app[keys.GLANCE] = DeadLetterGlance(settings)
    app.cleanup_ctx.extend([_database, _broker, _jobs])
    app[ENVIRONMENT] = environment()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/static/{filename}", _static)
    for table in (login.routes, overview.routes, callbacks.routes, letters.routes, actions.routes, audit.routes,
                  drift.routes, archive.routes):
        app.router.add_routes(table)
    return app
