"""The process commands: ``migrate``, ``gateway``, ``worker``, ``console``; and ``token new``.

Each is imported by the command line only when it runs (runtime.handlers.lazy),
and imports its process only then.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import secrets
import sys
from collections.abc import Callable

from runtime import event_loop, logs
from runtime.settings import Settings

log = logging.getLogger("flowscribe_ingest")


def _process(run: Callable[[Settings], int]) -> Callable[[Settings, argparse.Namespace], int]:
    """A long-running command: structured logs, a "starting" line with the settings, Ctrl-C exits 130."""

    def command(settings: Settings, args: argparse.Namespace) -> int:
        logs.configure(args.command, settings.log_format, settings.log_level)
        log.info("starting", extra={"command": args.command, "settings": settings.public()})
        try:
            return run(settings)
        except KeyboardInterrupt:
            return 130

    command.__doc__ = run.__doc__
    return command


@_process
def migrate(settings: Settings) -> int:
    """Create the database if needed, apply pending migrations and the reporting time zone."""
    from ops.connect import CANNOT_CONNECT, unreachable
    from store.analytics import UnknownTimeZone
    from store.lock_wait import LocksNotGranted
    from store.migrations import migrate as apply_migrations

    try:
        applied = asyncio.run(apply_migrations(settings.database_url, settings.reporting_time_zone))
    except CANNOT_CONNECT as e:
        # Said as the ops commands say it: one line with what to check, no traceback.
        print(f"flowscribe-ingest: {unreachable('PostgreSQL', settings.database_url, e)}", file=sys.stderr)
        return 1
    except UnknownTimeZone as e:
        print(f"flowscribe-ingest migrate: FLOWSCRIBE_REPORTING_TIME_ZONE: {e}", file=sys.stderr)
        return 1
    except LocksNotGranted as e:
        # Nothing half applied: each migration's transaction was rolled back; run it again later.
        print(f"flowscribe-ingest migrate: {e}", file=sys.stderr)
        return 1
    log.info("database up to date", extra={"applied_now": applied})
    return 0


@_process
def gateway(settings: Settings) -> int:
    """Serve the callback endpoint until SIGTERM/SIGINT."""
    if settings.gateway_processes > 1:
        # Forks the processes; none of them may inherit a running event loop.
        from gateway.processes import serve_in_processes

        return serve_in_processes(settings)
    from gateway.server import check_startable, serve
    from runtime.serving import listening_socket

    check_startable(settings)
    # The stdlib loop, whatever FLOWSCRIBE_EVENT_LOOP says: see runtime/event_loop.py.
    asyncio.run(serve(settings, listening_socket(settings.gateway_host, settings.gateway_port)))
    return 0


@_process
def worker(settings: Settings) -> int:
    """Consume callbacks into PostgreSQL until SIGTERM/SIGINT."""
    from runtime.gc_tuning import collecting_less_often
    from runtime.lifecycle import stop_on_signals
    from worker.main import run_worker

    async def work() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop), collecting_less_often():
            await run_worker(settings, stop)

    event_loop.run(work(), settings.event_loop)
    return 0


@_process
def console(settings: Settings) -> int:
    """Serve the operator's console until SIGTERM/SIGINT."""
    from console.app import check_startable
    from console.server import serve
    from runtime.serving import listening_socket

    check_startable(settings)
    asyncio.run(serve(settings, listening_socket(settings.console_host, settings.console_port)))
    return 0


def new_secret(signing: bool = False) -> str:
    if signing:
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


def token(args: argparse.Namespace) -> int:
    """Not a process: needs no settings, logs nothing (what it prints is a secret)."""
    print(new_secret(signing=args.signing_secret))
    return 0
