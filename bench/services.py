"""The bench's own database and vhost, and the processes it runs against them.

Everything is created fresh under one name (``flowscribe_bench_<random>``) and
dropped at the end, like the test suite does: nothing a user keeps is touched.
Processes are started by the bench and only those are stopped (by their pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from schemas import topology
from store.migrations import migrate

BASE_DATABASE_URL = os.environ.get("FLOWSCRIBE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_AMQP_URL = os.environ.get("FLOWSCRIBE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TABLES = (
    "callbacks", "jobs", "analyses", "sentences", "sentence_entities", "sentence_intents",
    "sentence_keywords", "sentence_scorings", "sentence_topics", "conversation_summaries",
)
ROOT = Path(__file__).resolve().parent.parent


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def _with_path(url: str, path: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + path))


class Services:
    """A fresh database and vhost for one bench run; ``close()`` drops both."""

    def __init__(self) -> None:
        self.name = f"flowscribe_bench_{secrets.token_hex(4)}"
        self.database_url = _with_path(BASE_DATABASE_URL, self.name)
        self.amqp_url = _with_path(BASE_AMQP_URL, urllib.parse.quote(self.name, safe=""))
        self.token = "bench-" + secrets.token_urlsafe(24)
        self._vhost = False
        self._db = False

    async def open(self) -> None:
        _rabbitmqctl("add_vhost", self.name)
        self._vhost = True
        user = urllib.parse.urlsplit(BASE_AMQP_URL).username or "guest"
        _rabbitmqctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")
        self._db = True
        await migrate(self.database_url)

    async def close(self) -> None:
        if self._db:
            conn = await asyncpg.connect(BASE_DATABASE_URL)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()
        if self._vhost:
            _rabbitmqctl("delete_vhost", self.name)

    def env(self, **settings: Any) -> dict[str, str]:
        """Environment of a product process pointed at this run's database and vhost."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCRIBE_")}
        env.update({
            "FLOWSCRIBE_AMQP_URL": self.amqp_url,
            "FLOWSCRIBE_DATABASE_URL": self.database_url,
            "FLOWSCRIBE_CALLBACK_TOKENS": self.token,
            "FLOWSCRIBE_GATEWAY_HOST": "127.0.0.1",
            "FLOWSCRIBE_LOG_FORMAT": "json",
            # Workers' own HTTP endpoint (probes, metrics): any free port, so several can run here.
            "FLOWSCRIBE_WORKER_HTTP_HOST": "127.0.0.1",
            "FLOWSCRIBE_WORKER_HTTP_PORT": "0",
            "PYTHONPATH": str(ROOT),
        })
        env.update({f"FLOWSCRIBE_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    async def reset(self) -> None:
        """Empty tables and queues (between phases)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute("TRUNCATE " + ", ".join(f"flowscribe.{t}" for t in TABLES))
        finally:
            await conn.close()
        await self.purge()

    async def purge(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            await topology.declare(channel)
            for name in (topology.CALLBACK_QUEUE, topology.DEAD_LETTER_QUEUE):
                queue = await channel.get_queue(name)
                await queue.purge()

    async def queue_depth(self, name: str = topology.CALLBACK_QUEUE) -> int:
        import aio_pika

        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            return queue.declaration_result.message_count or 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes ---------------------------------------------------------------------


class Proc:
    """A child process of the bench: its log file, its CPU and peak RSS, a clean stop."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)
        self.pid = self.popen.pid
        self.ps = psutil.Process(self.pid)
        self.rusage: resource.struct_rusage | None = None
        self._peak: int | None = None
        self.returncode: int | None = None

    def cpu_seconds(self) -> float:
        if self.rusage is not None:  # ended: its whole life, exactly
            return self.rusage.ru_utime + self.rusage.ru_stime
        total = 0.0
        for ps in self._family():  # a gateway with several processes: all of them
            with contextlib.suppress(psutil.Error):
                t = ps.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for ps in self._family():
            with contextlib.suppress(psutil.Error):
                total += ps.memory_info().rss
        return total

    def hwm(self) -> int:
        """Peak RSS so far (the kernel's high-water mark), bytes; of several processes, the sum of theirs."""
        total = 0
        for ps in self._family():
            with contextlib.suppress(OSError), open(f"/proc/{ps.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        return total

    def _family(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def _reap(self, block: bool = False) -> bool:
        """Collect the exit status and rusage if ended (never via Popen, which would lose the rusage)."""
        if self.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if not pid:
            return False
        self.rusage, self.returncode = usage, os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode
        self._log.close()
        return True

    def alive(self) -> bool:
        return not self._reap()

    def log_events(self) -> Iterator[dict[str, Any]]:
        with open(self.log_path, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    def wait_for_event(self, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            if any(e.get("event") == event for e in self.log_events()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: no {event!r} within {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the product's clean stop), then SIGKILL if it does not end in time."""
        if self._reap():
            return
        self._peak = self.hwm()
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._reap():
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        self._reap(block=True)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._reap():
                return self.returncode  # type: ignore[return-value]
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} still running after {timeout}s")

    @property
    def peak_rss(self) -> int:
        """Peak RSS until it was told to stop: the kernel's high-water mark of its own memory.

        Not rusage's ru_maxrss: Linux carries over the RSS the process had before
        exec, i.e. a copy of the forking bench's, into that figure.
        """
        return self._peak if self._peak is not None else self.hwm()


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_http_ready(port: int, path: str = "/readyz", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"nothing ready on port {port}{path} after {timeout}s")


# --- monitoring ----------------------------------------------------------------------


def _named_cpu(names: tuple[str, ...]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        if p.info["name"] in names and p.info["cpu_times"] is not None:
            t = p.info["cpu_times"]
            out[p.pid] = t.user + t.system
    return out


class Window:
    """CPU used during a measured window: by our processes, the broker, PostgreSQL, the whole machine.

    CPU% is of one core (100% = one core busy); the machine has ``cores`` of them.
    Also samples the RSS of our processes every 100 ms (the peak is the kernel's).
    """

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs
        self.samples: dict[str, list[tuple[float, int]]] = {k: [] for k in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Window:
        self.t0 = time.monotonic()
        self.cpu0 = {k: p.cpu_seconds() for k, p in self.procs.items()}
        self.machine0 = psutil.cpu_times()
        self.broker0 = _named_cpu(("beam.smp",))
        self.pg0 = _named_cpu(("postgres",))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.elapsed = time.monotonic() - self.t0
        self.cpu = {k: 100 * (p.cpu_seconds() - self.cpu0[k]) / self.elapsed for k, p in self.procs.items()}
        m1 = psutil.cpu_times()
        busy = sum(getattr(m1, f) - getattr(self.machine0, f) for f in ("user", "system", "nice", "irq", "softirq", "steal"))
        total = sum(m1) - sum(self.machine0)
        self.machine_busy = 100 * busy / total if total else 0.0
        self.cpu["broker"] = self._delta(self.broker0, _named_cpu(("beam.smp",)))
        self.cpu["postgres"] = self._delta(self.pg0, _named_cpu(("postgres",)))

    def _delta(self, before: dict[int, float], after: dict[int, float]) -> float:
        used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
        return 100 * used / self.elapsed

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic() - self.t0
            for k, p in self.procs.items():
                self.samples[k].append((now, p.rss()))

    def summary(self) -> dict[str, Any]:
        self.close()
        return {
            "seconds": round(self.elapsed, 3),
            "cpu_percent": {k: round(v, 1) for k, v in self.cpu.items()},
            "machine_busy_percent": round(self.machine_busy, 1),
            "peak_rss_mb": {k: round(max((r for _, r in s), default=0) / 2**20, 1) for k, s in self.samples.items()},
        }


def machine() -> dict[str, Any]:
    import importlib.metadata as md
    import platform

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("aiohttp", "aio-pika", "aiormq", "asyncpg", "msgspec", "lxml", "uvloop", "psutil"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(Exception):
        out = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=60)
        info["rabbitmq"] = out.stdout.strip()
    with contextlib.suppress(Exception):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
        info["wrk"] = (out.stdout + out.stderr).split("Copyright")[0].strip()
    info["product_digest"] = product_digest()
    info["product_dirs"] = list(PRODUCT_DIRS)
    info["event_loop"] = event_loop()
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *PRODUCT_DIRS],
                               capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        info["commit"] = out.stdout.strip() + (" + uncommitted changes in the product code" if dirty else "")
    return info


PRODUCT_DIRS = ("flowscribe_ingest", "ops", "gateway", "worker", "store", "schemas", "runtime")


def product_digest() -> str:
    """A short hash of the product's code as measured (commit or not): which code these figures are of."""
    import hashlib

    h = hashlib.sha256()
    for d in PRODUCT_DIRS:
        for f in sorted((ROOT / d).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def event_loop() -> str:
    """The loop the worker runs on here (``FLOWSCRIBE_EVENT_LOOP``, runtime/event_loop.py); the gateway's is asyncio."""
    import importlib.metadata as md

    from runtime.settings import Settings

    if Settings.from_env().event_loop == "uvloop":
        return f"worker uvloop {md.version('uvloop')}, gateway asyncio (stdlib)"
    return "asyncio (stdlib)"


async def postgres_version(database_url: str) -> str:
    """Version and the settings that move the figures (autovacuum off: tables are never re-analysed)."""
    conn = await asyncpg.connect(database_url)
    try:
        shown = [f"{name}={await conn.fetchval(f'SHOW {name}')}" for name in
                 ("autovacuum", "synchronous_commit", "fsync", "shared_buffers", "max_wal_size")]
        return f"{await conn.fetchval('SHOW server_version')} ({', '.join(shown)})"
    finally:
        await conn.close()


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
