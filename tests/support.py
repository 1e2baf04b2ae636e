"""Helpers shared by the tests: samples, posting callbacks, waiting on conditions."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

SAMPLES = Path(__file__).parents[1] / "schemas" / "samples"  # the vendor's own, shipped with the contract
JSON_SAMPLE = (SAMPLES / "vendor-sample.json").read_bytes()
XML_SAMPLE = (SAMPLES / "vendor-sample.xml").read_bytes()

T = TypeVar("T")

# The callback token of this test run; tests check it never reaches a log.
TOKEN = "test-token-" + secrets.token_urlsafe(16)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 15.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class TcpProxy:
    """A loopback TCP proxy the tests can cut and restore, standing between a client and a service.

    ``close()`` refuses new connections and resets the open ones (a crash or a
    restart as the client sees it); ``open()`` serves again on the same port.
    ``freeze()`` silently drops everything (a black-holed path that only
    heartbeats or timeouts reveal); ``thaw()`` ends that.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._flowing = True

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        """Become a black hole: connections stay open, nothing passes either way."""
        self._flowing = False

    def thaw(self) -> None:
        """Pass traffic again; connections that lost bytes meanwhile are reset."""
        self._flowing = True
        self.reset()

    def reset(self) -> None:
        """Reset every open connection at once (new ones are still accepted)."""
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.reset()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._links.update((client_writer, upstream_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    if self._flowing:
                        writer.write(data)
                        await writer.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                writer.transport.abort()
                self._links.discard(writer)

        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        import urllib.parse

        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def service_env(settings, **overrides: str) -> dict[str, str]:
    """The environment a `flowscribe-ingest` child process needs to use the test run's services."""
    import os

    return {
        **os.environ,
        "FLOWSCRIBE_AMQP_URL": settings.amqp_url,
        "FLOWSCRIBE_DATABASE_URL": settings.database_url,
        "FLOWSCRIBE_CALLBACK_TOKENS": TOKEN,
        "FLOWSCRIBE_GATEWAY_HOST": "127.0.0.1",
        "FLOWSCRIBE_GATEWAY_PORT": "0",
        "FLOWSCRIBE_WORKER_HTTP_HOST": "127.0.0.1",
        "FLOWSCRIBE_WORKER_HTTP_PORT": "0",
        "FLOWSCRIBE_LOG_FORMAT": "json",
        **overrides,
    }


class CliProcess:
    """A real `flowscribe-ingest COMMAND` child process, its whole output (stdout and stderr) collected."""

    def __init__(self, process: asyncio.subprocess.Process, command: str) -> None:
        self.process = process
        self.command = command
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._collect())

    @classmethod
    async def start(cls, command: str, env: dict[str, str], *, code: str | None = None) -> CliProcess:
        """Run the command; ``code`` runs first in the child (fault injection)."""
        import sys

        program = f"{code or ''}\nimport sys\nfrom flowscribe_ingest.cli import main\nsys.exit(main([{command!r}]))"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", program, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, command)

    async def _collect(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def events(self) -> list[dict]:
        """The JSON log lines so far (anything else, e.g. a warning, is skipped)."""
        import json

        return [json.loads(line) for line in self.lines if line.startswith("{")]

    async def event(self, name: str, *, timeout: float = 30.0) -> dict:
        """Wait for the first log line whose event is ``name``."""
        async def logged() -> dict | None:
            found = next((e for e in self.events() if e.get("event") == name), None)
            if found is None and self.process.returncode is not None:
                raise AssertionError(f"{self.command} exited before {name!r}:\n{self.output}")
            return found
        return await eventually(logged, timeout=timeout, what=f"{self.command} to log {name!r}")

    def rss_bytes(self) -> int:
        if self.process.returncode is not None:
            return 0
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0  # exited

    def send_signal(self, sig: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)

    async def exited(self, timeout: float = 60.0) -> int:
        """The exit code of a command that ends by itself (all its output collected)."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (killed, and the test failed, if it does not exit in time)."""
        import signal

        self.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        await self._reader
        return code
