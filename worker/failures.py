"""Whose fault is a failed write: the infrastructure's (wait and retry) or the message's (dead-letter)."""

from __future__ import annotations

import enum

import asyncpg


class Fault(enum.Enum):
    # The database cannot be used right now (down, restarting, full, not migrated):
    # no message is to blame; hold the batch and retry until it is back.
    UNAVAILABLE = "unavailable"
    # Two transactions collided; running the batch again normally succeeds.
    CONFLICT = "conflict"
    # The batch's content was refused: find the message responsible and dead-letter it.
    DATA = "data"


_UNAVAILABLE = (
    OSError,  # includes ConnectionError: refused, reset, unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection was closed under us
    # The client's own view of the connection went wrong: "cannot switch to state
    # 15; another operation (2) is in progress" after a failover cut a statement
    # short, protocol errors, no host of a multi-host URL being a primary. The
    # connection is to blame, never the message.
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,  # class 57: shutdown, cannot connect now, query cancelled
    asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, too many connections
    asyncpg.ReadOnlySQLTransactionError,  # a failover left us on a replica
    asyncpg.InvalidCatalogNameError,  # the database is not there (yet)
    asyncpg.InvalidSchemaNameError,  # not migrated (yet)
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedColumnError,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidPasswordError,
)
_CONFLICT = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    asyncpg.UniqueViolationError,  # a race our locks should prevent; re-reading resolves it
)


def classify(exc: BaseException) -> Fault:
    if isinstance(exc, asyncpg.exceptions.DataError):
        return Fault.DATA  # an InterfaceError, but raised for a value we could not encode
    if isinstance(exc, _UNAVAILABLE):
        return Fault.UNAVAILABLE
    if isinstance(exc, _CONFLICT):
        return Fault.CONFLICT
    return Fault.DATA
