"""Fault-injection fixtures: private PostgreSQL and RabbitMQ servers the tests may stop, crash and restart.

They never touch the machine's own services (see ``tests/faults/servers.py``).
Both are session-scoped: a test that stops or kills one must start it again
before it ends (``start()`` is a no-op on a running server, so calling it
defensively is fine).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.servers import PrivatePostgres, PrivateRabbitMQ


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault-injection tests that stop, crash and restart private PostgreSQL/RabbitMQ "
        "servers (tests/faults/servers.py); deselect with -m 'not faults'",
    )


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A started throwaway PostgreSQL cluster (``.url``, trust auth); deleted at the end of the run."""
    server = PrivatePostgres(tmp_path_factory.mktemp("private-postgres"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def private_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """A started throwaway RabbitMQ node (``.url``, guest from loopback); deleted at the end of the run."""
    server = PrivateRabbitMQ(tmp_path_factory.mktemp("private-rabbitmq"))
    try:
        server.start()
        yield server
    finally:
        server.close()
