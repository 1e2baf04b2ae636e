"""Short-lived connections for one ops command, with errors that say what to check.

An ops command is one short run, so it connects directly (no reconnect loop as
in ``flowscribe_ingest.amqp``): if the broker or the database is not there, the
operator wants to hear it at once, with the URL (password hidden) and the
variable to set.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection

from flowscribe_ingest.amqp import connect_any
from flowscribe_ingest.settings import Settings
from flowscribe_ingest.urls import redact_urls
from ops.errors import OpsError
from schemas.topology import Topology, declare
from worker.failures import describe

CONNECT_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[tuple[AbstractConnection, AbstractChannel, Topology]]:
    """A connection named ``flowscribe-ops@<host>`` (to any node of the list that answers),
    a confirm channel on it, and the declared topology."""
    try:
        connection = await connect_any(settings.amqp_url, "ops", timeout=CONNECT_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - refused, DNS, auth, timeout: all mean the same to the operator
        raise OpsError(
            f"cannot reach RabbitMQ at {redact_urls(settings.amqp_url)}: {describe(e)};"
            " is it running? set FLOWSCRIBE_AMQP_URL"
        ) from None
    try:
        # on_return_raises: a mandatory publish nobody routes must fail, not vanish.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            declared = await declare(channel)
        except aio_pika.exceptions.ChannelPreconditionFailed as e:
            raise OpsError(f"the broker's queues differ from this version's topology: {describe(e)}") from None
        yield connection, channel, declared
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection to the migrated database (with several hosts: the primary, see flowscribe_ingest.urls)."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT)
    except Exception as e:  # noqa: BLE001
        raise OpsError(
            f"cannot reach PostgreSQL at {redact_urls(settings.database_url)}: {describe(e)};"
            " is it running? set FLOWSCRIBE_DATABASE_URL"
        ) from None
    try:
        if await conn.fetchval("SELECT to_regclass('flowscribe.callbacks')") is None:
            raise OpsError(
                f"the database at {redact_urls(settings.database_url)} has no flowscribe tables;"
                " run `flowscribe-ingest migrate` (or set FLOWSCRIBE_DATABASE_URL)"
            )
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
