"""The private servers themselves: data written before a restart or a crash is there after it."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Callable

import aio_pika
import asyncpg
import pytest

from tests.faults.servers import QUORUM_QUEUE_KILL_WINDOW, PrivatePostgres, PrivateRabbitMQ

pytestmark = pytest.mark.faults

QUORUM: dict[str, aio_pika.abc.FieldValue] = {"x-queue-type": "quorum"}


async def _publish(url: str, queue_name: str, body: bytes) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()  # publisher confirms: the broker has it on disk
        await channel.declare_queue(queue_name, durable=True, arguments=QUORUM)
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue_name
        )


async def _get(url: str, queue_name: str, timeout: float = 15.0) -> bytes:
    """Take one message off the queue (waiting while the restarted queue elects its leader)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, arguments=QUORUM)
        deadline = time.monotonic() + timeout
        while (message := await queue.get(fail=False, timeout=timeout)) is None:
            assert time.monotonic() < deadline, f"no message on {queue_name} after {timeout}s"
            await asyncio.sleep(0.1)
        await message.ack()
        return message.body


async def _store_token(url: str, token: str) -> None:
    """Commit one row with ``token`` (a probe that a restart or crash must keep)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS fault_probe (token text PRIMARY KEY)")
        await conn.execute("INSERT INTO fault_probe VALUES ($1)", token)
    finally:
        await conn.close()


async def _tokens_stored(url: str, token: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM fault_probe WHERE token = $1", token)
    finally:
        await conn.close()


async def _timed(what: str, func: Callable[[], object]) -> None:
    began = time.monotonic()
    await asyncio.to_thread(func)
    print(f"\n  {what}: {time.monotonic() - began:.2f}s", end="")


async def test_restart_keeps_row_and_persistent_quorum_message(
    private_postgres: PrivatePostgres, private_rabbitmq: PrivateRabbitMQ
) -> None:
    token = secrets.token_hex(4)
    queue_name = f"fault-probe-{token}"
    await _store_token(private_postgres.url, token)
    await _publish(private_rabbitmq.url, queue_name, token.encode())
    listing = await asyncio.to_thread(private_rabbitmq.ctl, "list_queues", "-q", "name", "type")
    assert f"{queue_name}\tquorum" in listing.stdout

    await asyncio.gather(
        _timed("postgres restart", private_postgres.restart),
        _timed("rabbitmq restart", private_rabbitmq.restart),
    )

    assert await _tokens_stored(private_postgres.url, token) == 1
    assert await _get(private_rabbitmq.url, queue_name) == token.encode()


async def test_postgres_crash_keeps_committed_row(private_postgres: PrivatePostgres) -> None:
    token = secrets.token_hex(4)
    await _store_token(private_postgres.url, token)

    await _timed("postgres stop(immediate)", lambda: private_postgres.stop("immediate"))
    await _timed("postgres start (crash recovery)", private_postgres.start)

    assert await _tokens_stored(private_postgres.url, token) == 1


async def test_rabbitmq_kill_keeps_persistent_quorum_message(private_rabbitmq: PrivateRabbitMQ) -> None:
    queue_name = f"fault-probe-{secrets.token_hex(4)}"
    await _publish(private_rabbitmq.url, queue_name, b"survives SIGKILL")
    await asyncio.sleep(2 * QUORUM_QUEUE_KILL_WINDOW)  # let the new queue's registration reach disk

    family = private_rabbitmq.pids
    assert {"beam.smp", "erl_child_setup"} <= {name for _, _, name in family}
    await _timed("rabbitmq kill", private_rabbitmq.kill)
    # Nothing of the node may still run. Zombies are fine: they have exited and
    # were re-parented to init (which reaps them), as orphans of a SIGKILL are.
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    killed = {pid for pid, _, _ in family}
    leftovers = [
        line for line in ps.splitlines()
        if not line.split()[1].startswith("Z")
        and (int(line.split()[0]) in killed or private_rabbitmq.nodename in line)
    ]
    assert not leftovers, leftovers
    await _timed("rabbitmq start after kill", private_rabbitmq.start)

    assert await _get(private_rabbitmq.url, queue_name) == b"survives SIGKILL"
