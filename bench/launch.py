"""Run a product process (``gateway`` or ``worker``) exactly as the CLI does, optionally with a bench-only change.

    python -m bench.launch gateway                   # the product, unchanged
    python -m bench.launch gateway --noop-publish    # the HTTP ceiling
    python -m bench.launch worker --no-per-message-logs   # a prototype of a proposal

Changes are applied by replacing names at import time, never by editing the
product: ``--noop-publish`` swaps the handler's ``publish_callback`` for one that
answers a fresh id at once, so the app, middlewares, checks, body reading,
logging and server options stay the product's own.
"""

from __future__ import annotations

import argparse
import sys
import uuid


def _noop_publish() -> None:
    import gateway.app

    async def publish_nothing(broker: object, body: bytes, content_type: str, timeout: float) -> str:
        return str(uuid.uuid4())

    gateway.app.publish_callback = publish_nothing  # type: ignore[attr-defined]


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

    asyncpg.create_pool = with_mode  # worker.consumer calls asyncpg.create_pool


def _no_per_message_logs() -> None:
    """Drop the info lines written for every callback (gateway: access log and "callback accepted";
    worker: "callback stored"), keeping every other line (per batch, warnings, errors)."""
    import logging

    per_message = {"callback accepted", "callback stored"}
    logging.getLogger("gateway.access").addFilter(lambda record: record.levelno > logging.INFO)
    for name in ("gateway", "worker"):
        logging.getLogger(name).addFilter(
            lambda record: record.levelno > logging.INFO or record.msg not in per_message)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["gateway", "worker"])
    parser.add_argument("--noop-publish", action="store_true", help="gateway: publish nothing (HTTP ceiling)")
    parser.add_argument("--no-per-message-logs", action="store_true", help="drop the info lines logged per callback")
    parser.add_argument("--plan-cache-mode", choices=["auto", "force_custom_plan", "force_generic_plan"],
                        help="worker: PostgreSQL plan_cache_mode on its pool")
    args = parser.parse_args()
    if args.noop_publish:
        _noop_publish()
    if args.no_per_message_logs:
        _no_per_message_logs()
    if args.plan_cache_mode:
        _plan_cache_mode(args.plan_cache_mode)
    from flowscribe_ingest.cli import main as cli_main

    return cli_main([args.command])


if __name__ == "__main__":
    sys.exit(main())
