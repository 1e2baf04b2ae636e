"""Typed application state of the console (``web.AppKey``): one place names each shared resource."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from console.sessions import Session
from runtime.amqp import BrokerSession
from runtime.settings import Settings
from schemas.topology import Topology

if TYPE_CHECKING:
    from console.jobs import Jobs
    from console.previews import Previews
    from console.queues import DeadLetterGlance
    from console.sessions import DatabaseStorage

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER: web.AppKey[BrokerSession[Topology]] = web.AppKey("broker")
SESSION_STORAGE: web.AppKey[DatabaseStorage] = web.AppKey("session_storage")
JOBS: web.AppKey[Jobs] = web.AppKey("jobs")
PREVIEWS: web.AppKey[Previews] = web.AppKey("previews")
GLANCE: web.AppKey[DeadLetterGlance] = web.AppKey("glance")

# Per request: the Session (console.security puts it there).
SESSION = web.RequestKey("session", Session)
