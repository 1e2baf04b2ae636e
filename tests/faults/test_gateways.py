"""Two gateway processes behind HAProxy, as a user runs them: restarted one at a time with
SIGTERM under load (a rolling deploy), no request fails and none is refused.

HAProxy health-checks `/readyz` and sends a request whose connection a stopping
gateway refused (its listener closes on SIGTERM) to the other one: the README's
"Deploying" says what Kubernetes needs for the same (a pause before the drain).
HAProxy is Debian's (scripts/bootstrap installs it), run as a private process.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import RunningWorker
from tests.faults.checker import REPORT, History, check, send_callbacks, wait_until_accounted
from tests.faults.servers import free_port
from tests.support import TOKEN, CliProcess, eventually, service_env

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(180),
    pytest.mark.skipif(HAPROXY is None, reason="no haproxy (scripts/bootstrap installs Debian's)"),
]

# What a user would write: health checks on /readyz; a request the chosen gateway did not
# take (connection refused, or closed before any answer) is sent to the other one, which is
# safe because no gateway saw it; one server connection per request, so that none is
# reused just as a stopping gateway closes it.
CONFIG = """\
global
    maxconn 2000
    stats socket {socket} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request
    option http-server-close
    http-reuse never
frontend callbacks
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 250ms fall 2 rise 2
{servers}
"""


class HAProxy:
    """A private HAProxy in front of gateways on ``ports``."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.port = free_port()
        self.socket = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        servers = "\n".join(f"    server g{i} 127.0.0.1:{p} check" for i, p in enumerate(ports))
        self.config.write_text(CONFIG.format(socket=self.socket, port=self.port, servers=servers))
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/flowscribe/callback/{TOKEN}"

    async def __aenter__(self) -> HAProxy:
        assert HAPROXY is not None
        check = await asyncio.create_subprocess_exec(HAPROXY, "-c", "-q", "-f", str(self.config))
        assert await check.wait() == 0, "haproxy refused its configuration"
        self.process = await asyncio.create_subprocess_exec(
            HAPROXY, "-db", "-f", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it (UP, DOWN, ...), from its stats socket."""
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(str(self.socket))
            writer.write(b"show stat\n")
            await writer.drain()
            text = (await reader.read()).decode()
            writer.close()
            rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
            return {r["svname"]: r["status"] for r in rows if r["pxname"] == "gateways"}
        return {}

    async def wait_until(self, server: str, status: str) -> None:
        async def reached() -> bool:
            return (await self.states()).get(server, "").startswith(status)
        await eventually(reached, what=f"haproxy to see {server} {status}")


async def gateway_process(settings, port: int) -> CliProcess:
    gateway = await CliProcess.start("gateway", service_env(settings, FLOWSCRIBE_GATEWAY_PORT=str(port)))
    await gateway.event("gateway listening")
    return gateway


@contextlib.asynccontextmanager
async def gateways(settings, ports: list[int]) -> AsyncIterator[list[CliProcess]]:
    running = [await gateway_process(settings, port) for port in ports]
    try:
        yield running
    finally:
        for gateway in running:
            await gateway.stop()


class TestGatewaysBehindALoadBalancer:
    async def test_rolling_restart_of_two_gateways_under_load(self, settings, http, db, broker, tmp_path):
        ports = [free_port(), free_port()]
        history = History()
        done = asyncio.Event()
        worker = RunningWorker(settings)
        restarts = []
        try:
            async with gateways(settings, ports) as running, HAProxy(tmp_path, ports) as proxy:
                for i in range(len(ports)):
                    await proxy.wait_until(f"g{i}", "UP")
                # The sender does not retry here (retry_for=0): every failure would show.
                sending = asyncio.create_task(send_callbacks(
                    http, proxy.url, 100_000, concurrency=8, rate=80, request_timeout=100.0, retry_for=0.0,
                    history=history, until=done))
                for i, port in enumerate(ports):
                    await asyncio.sleep(1.5)  # the deploy's cadence: load flows between restarts
                    code = await running[i].stop()
                    restarts.append(code)
                    running[i] = await gateway_process(settings, port)
                    await proxy.wait_until(f"g{i}", "UP")  # as a rolling deploy waits for readiness
                await asyncio.sleep(1.5)  # and the load goes on after the last one
                done.set()
                await sending
            await wait_until_accounted(history, db, broker)
        finally:
            await worker.stop()
        verdict = await check(history, db, broker)
        line = verdict.line("two gateways behind HAProxy, restarted one at a time with SIGTERM")
        line += f" refusals={history.refusals} answers={dict(history.statuses)}"
        REPORT.append(line)
        print(line)
        assert restarts == [0, 0], "a gateway did not stop cleanly on SIGTERM"
        assert verdict.passed, line
        assert history.refusals == 0 and set(history.statuses) == {"202"}, line
        assert verdict.ok == verdict.sent > 100
