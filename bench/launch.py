"""Run a product process (``gateway`` or ``worker``) exactly as the CLI does, optionally with a bench-only change.

    python -m bench.launch gateway                   # the product, unchanged
    python -m bench.launch gateway --noop-publish    # the HTTP ceiling
    python -m bench.launch worker --pipeline --no-per-message-logs   # prototypes of proposals

Changes are applied by replacing names at import time, never by editing the
product: ``--noop-publish`` swaps the handler's ``publish_callback`` for one that
answers a fresh id at once, so the app, middlewares, checks, body reading,
logging and server options stay the product's own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid


def _noop_publish() -> None:
    import gateway.app

    async def publish_nothing(broker: object, body: bytes, content_type: str, timeout: float) -> str:
        return str(uuid.uuid4())

    gateway.app.publish_callback = publish_nothing  # type: ignore[assignment]


def _ack_multiple() -> None:
    """Ack a committed batch with one ``basic.ack(multiple=True)`` instead of one ack per message.

    Safe with the product's one-write-at-a-time loop: every lower delivery tag on the
    channel is in this batch, in an earlier (landed) one, or was dead-lettered (acked).
    """
    from worker import consumer

    async def ack_all(self, landed) -> None:  # type: ignore[no-untyped-def]
        if not landed:
            return
        last = max(landed, key=lambda m: m.delivery_tag)
        try:
            await asyncio.wait_for(last.ack(multiple=True), self._settings.publish_timeout)
        except Exception:  # noqa: BLE001 - as the product: redelivered, absorbed by the store
            pass

    if not hasattr(consumer.Worker, "_ack_all"):
        raise SystemExit("--ack-multiple needs a worker that acks through Worker._ack_all")
    consumer.Worker._ack_all = ack_all  # type: ignore[method-assign]


def _stdlib_loop() -> None:
    """Run on asyncio's own event loop even where the product would pick uvloop."""
    from flowscribe_ingest import cli

    if hasattr(cli, "run_event_loop"):
        cli.run_event_loop = asyncio.run  # type: ignore[assignment]


def _pipeline(depth: int = 2) -> None:
    """Keep ``depth`` batches' *writes* in flight on the pool's two connections (the product
    overlaps one batch's decode with the previous batch's write, but writes one at a time).
    Concurrent writes are as safe as concurrent workers: the store serialises on advisory locks.
    Not to be combined with --ack-multiple (batches may then commit out of order)."""
    from worker import consumer

    async def run(self, stop) -> None:  # type: ignore[no-untyped-def]
        wake = asyncio.create_task(self._wake_on(stop))
        in_flight: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                batch = await self._collect()
                if batch:
                    task = asyncio.create_task(self._process_safely(batch))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    if len(in_flight) >= depth:
                        await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if in_flight:
                await asyncio.gather(*in_flight)
        await self._shutdown()

    consumer.Worker.run = run  # type: ignore[method-assign]


def _plan_cache_mode(mode: str) -> None:
    """Set PostgreSQL's plan_cache_mode on the worker's pool, whatever the product sets.

    asyncpg prepares every statement; after five executions PostgreSQL may keep a
    generic plan, which for a table still empty (or never analysed) is a seq scan;
    ``force_custom_plan`` plans each execution with its actual parameters.
    """
    import asyncpg

    create_pool = asyncpg.create_pool

    def with_mode(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["server_settings"] = {**(kwargs.get("server_settings") or {}), "plan_cache_mode": mode}
        return create_pool(*args, **kwargs)

    asyncpg.create_pool = with_mode  # type: ignore[assignment]  # worker.consumer calls asyncpg.create_pool


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
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop whatever the product would pick")
    parser.add_argument("--asyncio", action="store_true", help="run on asyncio's loop whatever the product would pick")
    parser.add_argument("--ack-multiple", action="store_true", help="worker: one ack(multiple=True) per batch")
    parser.add_argument("--no-per-message-logs", action="store_true", help="drop the info lines logged per callback")
    parser.add_argument("--pipeline", action="store_true", help="worker: two batch writes in flight on the pool")
    parser.add_argument("--plan-cache-mode", choices=["auto", "force_custom_plan", "force_generic_plan"],
                        help="worker: PostgreSQL plan_cache_mode on its pool")
    args = parser.parse_args()
    if args.noop_publish:
        _noop_publish()
    if args.ack_multiple:
        _ack_multiple()
    if args.no_per_message_logs:
        _no_per_message_logs()
    if args.pipeline:
        _pipeline()
    if args.asyncio:
        _stdlib_loop()
    if args.plan_cache_mode:
        _plan_cache_mode(args.plan_cache_mode)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from flowscribe_ingest.cli import main as cli_main

    return cli_main([args.command])


if __name__ == "__main__":
    sys.exit(main())
