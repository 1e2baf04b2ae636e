"""Run a product process (``gateway`` or ``worker``) exactly as the CLI does, optionally with a bench-only change.

    python -m bench.launch gateway                   # the product, unchanged
    python -m bench.launch gateway --noop-publish    # the HTTP ceiling
    python -m bench.launch worker --no-per-message-logs   # a prototype of a proposal

Never by editing the product: ``--noop-publish`` hands the gateway's own
``serve`` (and so ``create_app``) a ``publish`` that answers a fresh id at once,
so the app, middlewares, checks, body reading, logging and server options stay
the product's own. The prototypes below still replace names at import time.
"""

from __future__ import annotations

import argparse
import sys


def _gateway_publishing_nothing() -> int:
    """The gateway command (one process), with a publish that answers at once: the HTTP ceiling."""
    import asyncio

    from gateway.server import check_startable, serve
    from runtime import logs
    from runtime.serving import listening_socket
    from runtime.settings import Settings

    async def publish_nothing(broker: object, message: object, timeout: float) -> None:
        return None

    settings = Settings.from_env()
    logs.configure("gateway", settings.log_format, settings.log_level)
    check_startable(settings)
    sock = listening_socket(settings.gateway_host, settings.gateway_port)
    asyncio.run(serve(settings, sock, publish=publish_nothing))
    return 0


def _gateway_under_gunicorn() -> int:
    """The gateway's processes run by gunicorn's aiohttp worker instead of gateway.processes.

    An evaluation (bench/README.md): the same app, server options, access log and
    redaction per process, one broker connection with confirms per process
    (the app's own cleanup context), metrics shared across processes; gunicorn
    binds the port once and its workers accept on that one socket.
    """
    import os
    import tempfile

    # Before prometheus_client is imported (by the app): counts shared across processes.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flowscribe-gunicorn-metrics-")
    from aiohttp import web
    from gunicorn.app.base import BaseApplication

    from gateway.app import create_app
    from gateway.redaction import redacted_logs
    from gateway.server import check_startable, server_options
    from runtime import logs
    from runtime.settings import Settings

    settings = Settings.from_env()
    logs.configure("gateway", settings.log_format, settings.log_level)
    check_startable(settings)

    async def runner() -> web.AppRunner:  # called in each worker, after the fork
        logs.configure("gateway", settings.log_format, settings.log_level)
        redacted_logs(settings.callback_tokens).__enter__()  # for the worker's whole life
        return web.AppRunner(create_app(settings), shutdown_timeout=settings.shutdown_timeout,
                             handle_signals=False, **server_options(settings))

    class Gateway(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", [f"{settings.gateway_host}:{settings.gateway_port}"])
            self.cfg.set("workers", settings.gateway_processes)
            self.cfg.set("worker_class", "aiohttp.GunicornWebWorker")
            self.cfg.set("reuse_port", True)
            self.cfg.set("graceful_timeout", str(int(settings.shutdown_timeout)))

        def load(self) -> object:
            return runner

    Gateway().run()
    return 0


def _plan_cache_mode(mode: str) -> None:
    """Set PostgreSQL's plan_cache_mode on the worker's pool, whatever the product sets.

    asyncpg prepares every statement; after five executions PostgreSQL may keep a
    generic plan, which for a table still empty (or never analysed) is a seq scan;
    ``force_custom_plan`` plans each execution with its actual parameters.
    """
    import asyncpg

    create_pool = asyncpg.create_pool

    def with_mode(*args, **kwargs):
        kwargs["server_settings"] = {**(kwargs.get("server_settings") or {}), "plan_cache_mode": mode}
        return create_pool(*args, **kwargs)

    asyncpg.create_pool = with_mode  # the worker's pool comes from it, through store.connection.create_pool


def _no_per_message_logs() -> None:
    """Drop the info lines written for every callback (gateway: access log and "callback accepted";
    worker: "callback stored"), keeping every other line (per batch, warnings, errors)."""
    import logging

    per_message = {"callback accepted", "callback stored"}
    logging.getLogger("gateway.access").addFilter(lambda record: record.levelno > logging.INFO)
    for name in ("gateway", "worker"):
        logging.getLogger(name).addFilter(
            lambda record: record.levelno > logging.INFO or record.msg not in per_message)


def _no_summaries() -> None:
    """The worker as it was before the analytics summaries: the baseline of their cost."""
    import store.batch

    async def write_nothing(conn: object, analysis_ids: list[object]) -> dict[str, int]:
        return {}

    store.batch.write_summaries = write_nothing  # type: ignore[assignment]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["gateway", "worker"])
    parser.add_argument("--noop-publish", action="store_true", help="gateway: publish nothing (HTTP ceiling)")
    parser.add_argument("--gunicorn", action="store_true",
                        help="gateway: FLOWSCRIBE_GATEWAY_PROCESSES run by gunicorn's aiohttp worker (evaluation)")
    parser.add_argument("--no-per-message-logs", action="store_true", help="drop the info lines logged per callback")
    parser.add_argument("--plan-cache-mode", choices=["auto", "force_custom_plan", "force_generic_plan"],
                        help="worker: PostgreSQL plan_cache_mode on its pool")
    parser.add_argument("--no-summaries", action="store_true",
                        help="worker: skip the analytics summaries (their cost's baseline)")
    args = parser.parse_args()
    if args.no_summaries:
        _no_summaries()
    if args.no_per_message_logs:
        _no_per_message_logs()
    if args.plan_cache_mode:
        _plan_cache_mode(args.plan_cache_mode)
    if args.noop_publish:
        return _gateway_publishing_nothing()
    if args.gunicorn:
        return _gateway_under_gunicorn()
    from flowscribe_ingest.cli import main as cli_main

    return cli_main([args.command])


if __name__ == "__main__":
    sys.exit(main())
