"""Short-lived connections for one ops command, with errors that say what to check.

An ops command is one short run, so it connects directly (no reconnect loop as
in ``runtime.amqp``): if the broker or the database is not there, the
operator wants to hear it at once, with the URL (password hidden) and the
variable to set.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection

from ops.errors import OpsError
from runtime.amqp import connect_any
from runtime.errors import describe
from runtime.settings import Settings
from runtime.urls import redact_urls
from schemas.topology import Topology, declare

CONNECT_TIMEOUT = 10.0

# What connecting to PostgreSQL raises when the server is down, unreachable, not
# ready yet or refuses us: the operator's next step is the same for all of them.
CANNOT_CONNECT = (
    OSError,  # refused, reset, no route, DNS
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection closed under us
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.InvalidAuthorizationSpecificationError,  # unknown user, wrong password
)
_VARIABLES = {"RabbitMQ": "FLOWSCRIBE_AMQP_URL", "PostgreSQL": "FLOWSCRIBE_DATABASE_URL"}


def unreachable(service: str, url: str, error: BaseException) -> OpsError:
    """The one-line error for a broker or database we cannot connect to: the URL (password hidden) and a hint."""
    return OpsError(
        f"cannot reach {service} at {redact_urls(url)}: {describe(error)}; is it running? set {_VARIABLES[service]}"
    )


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[tuple[AbstractConnection, AbstractChannel, Topology]]:
    """A connection named ``flowscribe-ops@<host>``, a confirm channel on it, and the declared topology."""
    try:
        connection = await connect_any(settings.amqp_url, "ops", timeout=CONNECT_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - refused, DNS, auth, timeout: all mean the same to the operator
        raise unreachable("RabbitMQ", settings.amqp_url, e) from None
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
    """One connection to the migrated database."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT)
    except Exception as e:  # noqa: BLE001
        raise unreachable("PostgreSQL", settings.database_url, e) from None
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
