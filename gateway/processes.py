"""Several gateway processes on one port: one event loop per core.

One gateway process is bound by its own CPU: it parses HTTP and drives the AMQP
client on one core (bench/: about half the small-callback rate that either side
alone reaches). ``FLOWSCRIBE_GATEWAY_PROCESSES=N`` runs N of them on one host.

The supervisor binds N sockets to the same address with SO_REUSEPORT (the
first may pick a free port; the others take the same), forks one gateway per
socket, and then only waits: the kernel spreads incoming connections across
the sockets, and each process has its own broker connection and confirms its
own publishes, so "202 only once the broker has it" holds per request as it
does for one process. The supervisor itself never touches a request.

- SIGTERM/SIGINT: passed on to every process; each drains its in-flight
  requests as a single gateway does; the supervisor exits once all have.
- A process that dies on its own: the others are stopped the same graceful
  way and the supervisor exits 1, leaving the restart to whatever restarts a
  single gateway (compose, systemd, Kubernetes). Restarting here would hide a
  crash loop from it.
- Metrics: the processes count into files in one shared directory
  (prometheus_client's multiprocess mode), so ``/metrics`` reports the sum
  whichever process answers the scrape. The directory is the supervisor's,
  made empty at start and removed at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from runtime import tracing
from runtime.serving import listening_socket
from runtime.settings import Settings

log = logging.getLogger("gateway")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# prometheus_client's own variable (runtime.metrics.SHARED_DIR_ENV): named
# here without importing prometheus_client, whose mode is fixed by its first import.
_SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve_in_processes(settings: Settings) -> int:
    """Run ``settings.gateway_processes`` gateways on one port until stopped; the exit status."""
    if "prometheus_client" in sys.modules:
        # Its multiprocess mode is chosen when it is first imported.
        raise RuntimeError("serve_in_processes must run before prometheus_client is imported")
    metrics_dir = tempfile.mkdtemp(prefix="flowscribe-gateway-metrics-")
    os.environ[_SHARED_DIR_ENV] = metrics_dir
    try:
        return _supervise(settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings) -> int:
    from gateway.server import check_startable, serve

    check_startable(settings)  # once here, not once per process
    count = settings.gateway_processes
    sockets = _bind(settings.gateway_host, settings.gateway_port, count)
    port = sockets[0].getsockname()[1]
    children: dict[int, int] = {}  # pid -> index
    stopping = False
    failed = False

    def stop_all() -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already gone; reaped below
                os.kill(pid, signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        if not stopping:
            log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop_all()

    # Blocked while forking, so that a signal arriving meanwhile can run neither
    # this handler in a child nor the default action in the supervisor.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, on_signal)
        try:
            for index, sock in enumerate(sockets):
                pid = os.fork()
                if pid == 0:
                    os._exit(_child(serve, settings, sock, sockets, index))
                children[pid] = index
        except OSError:
            log.exception("could not start every gateway process; stopping those started")
            failed = True
            stop_all()
        finally:
            for sock in sockets:
                sock.close()  # the children hold their own
        log.info("gateway processes started", extra={
            "host": settings.gateway_host, "port": port, "processes": count, "pids": sorted(children)})
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            log.info("gateway process exited", extra={"pid": pid, "index": index, "exit_code": code})
            failed = failed or code not in (0, -signal.SIGTERM)
        else:
            log.error("gateway process exited unexpectedly; stopping the others",
                      extra={"pid": pid, "index": index, "exit_code": code})
            failed = True
            stop_all()
    log.info("gateway stopped", extra={"processes": count})
    return 1 if failed else 0


def _bind(host: str, port: int, count: int) -> list[socket.socket]:
    first = listening_socket(host, port, reuse_port=True)
    sockets = [first]
    try:
        bound_port = first.getsockname()[1]  # the free port chosen if port was 0
        sockets += [listening_socket(host, bound_port, reuse_port=True) for _ in range(count - 1)]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _child(serve: Callable[..., Coroutine[Any, Any, None]], settings: Settings, sock: socket.socket,
           sockets: list[socket.socket], index: int) -> int:
    """In a forked process: serve on ``sock`` until SIGTERM; the exit status."""
    try:
        for other in sockets:
            if other is not sock:
                other.close()
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)  # until the event loop installs its own
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        asyncio.run(serve(settings, sock))  # the stdlib loop: see runtime/event_loop.py
        return 0
    except BaseException:
        log.exception("gateway process failed", extra={"index": index})
        return 1
    finally:
        tracing.flush()  # os._exit follows: the process's last spans go now or never
        logging.shutdown()
