"""The console's audit trail: one log line per login and per action, saying who did what to which selection."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from console.security import session_of

log = logging.getLogger("console.audit")


def audit(request: web.Request, event: str, **facts: Any) -> None:
    session = session_of(request)
    log.info(event, extra={"user": session.user, "role": session.role, "remote": request.remote, **facts})
