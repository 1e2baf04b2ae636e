"""Compression bombs against the gateway: what one refused bomb costs it, and what bombs do to everyone else.

    .venv/bin/python -m bench.bombs                 # ~1 min; JSON summary on stdout
    .venv/bin/python -m bench.bombs --seconds 20    # longer latency windows

A bomb is the outside test's: ~4 MB of gzip that inflates to 4 GiB of zeros,
sent whole (Content-Length, no Expect) by a raw socket, as an attacker would.

1. CPU per refused bomb: the gateway process's CPU time (user + system, from
   the kernel) spent between sending one bomb and the gateway going idle again,
   for each way of refusing it before its body is used: wrong token (401),
   source outside FLOWSCRIBE_ALLOWED_NETWORKS (403, a second gateway), valid
   token with a 64 KiB FLOWSCRIBE_MAX_BODY_BYTES (413, a third gateway).
2. Latency of normal callbacks (one client, one small callback at a time, 202
   each) for ``--seconds`` without bombs, then for ``--seconds`` while four
   other clients send bombs to a wrong token back to back; same gateway, same run.

Runs in its own vhost and database (bench.services), like the rest of bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp

from bench.httpload import _percentiles
from bench.payloads import body as sample_body
from bench.services import Proc, Services, free_port, python_argv, wait_http_ready

BOMB_MIB = 4096  # of zeros: ~4 MB compressed


def make_bomb(mib: int = BOMB_MIB) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    return b"".join(co.compress(zeros) for _ in range(mib)) + co.flush()


def bomb_request(port: int, target: str, bomb: bytes) -> bytes:
    head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(bomb)}\r\nConnection: close\r\n\r\n").encode()
    return head + bomb


def send_bomb(port: int, request: bytes, timeout: float = 30.0) -> int:
    """Send the whole request as an attacker would (ignoring an early answer), then read the status; 0 if none."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the gateway closed on us: what it answered may still be readable
            s.sendall(request)
        data = b""
        try:
            while not data.endswith(b"\r\n\r\n") and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


def cpu_until_idle(proc: Proc, before: float, *, settle: float = 0.5, deadline: float = 30.0) -> float:
    """The process's CPU since ``before``, once it has used (almost) none for ``settle`` seconds."""
    end = time.monotonic() + deadline
    last = proc.cpu_seconds()
    while time.monotonic() < end:
        time.sleep(settle)
        now = proc.cpu_seconds()
        if now - last < 0.02:
            return now - before
        last = now
    return proc.cpu_seconds() - before


def cpu_per_bomb(proc: Proc, port: int, target: str, bomb: bytes, n: int) -> dict[str, Any]:
    request = bomb_request(port, target, bomb)
    costs, statuses, walls = [], [], []
    for _ in range(n):
        before = proc.cpu_seconds()
        started = time.monotonic()
        statuses.append(send_bomb(port, request))
        walls.append(time.monotonic() - started)
        costs.append(cpu_until_idle(proc, before))
    return {"statuses": statuses, "cpu_seconds": [round(c, 3) for c in costs],
            "cpu_seconds_mean": round(sum(costs) / n, 3), "answer_seconds_max": round(max(walls), 3)}


async def callbacks(port: int, token: str, body: bytes, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    other: dict[int, int] = {}
    url = f"http://127.0.0.1:{port}/flowscribe/callback/{token}"
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
            if r.status == 202:
                latencies.append(time.monotonic() - started)
            else:
                other[r.status] = other.get(r.status, 0) + 1
    ms = {k: round(v * 1000, 2) for k, v in _percentiles(latencies).items()}
    return {"callbacks": len(latencies), "not_202": other, "latency_ms": ms}


def bomb_clients(
    port: int, bomb: bytes, clients: int, stop: threading.Event
) -> tuple[list[threading.Thread], list[int]]:
    request = bomb_request(port, "/flowscribe/callback/wrong-token", bomb)
    sent: list[int] = []

    def client() -> None:
        while not stop.is_set():
            sent.append(send_bomb(port, request))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads, sent


def start(services: Services, out: Path, name: str, **settings: Any) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(name, python_argv("bench.launch", "gateway"), services.env(gateway_port=port, **settings), out)
    wait_http_ready(port)
    return proc, port


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    bomb = make_bomb()
    results: dict[str, Any] = {"bomb_bytes": len(bomb), "inflates_to_bytes": BOMB_MIB << 20}
    services = Services()
    await services.open()
    procs: list[Proc] = []
    try:
        gateway, port = start(services, out, "gateway")
        outside, outside_port = start(services, out, "gateway-allowlist", allowed_networks="192.0.2.0/24")
        small, small_port = start(services, out, "gateway-64k", max_body_bytes=65536)
        procs += [gateway, outside, small]
        good = f"/flowscribe/callback/{services.token}"
        results["cpu_per_refused_bomb"] = {
            "401 wrong token": cpu_per_bomb(gateway, port, "/flowscribe/callback/wrong-token", bomb, args.bombs),
            "403 source not allowed": cpu_per_bomb(outside, outside_port, good, bomb, args.bombs),
            "413 over a 64 KiB limit": cpu_per_bomb(small, small_port, good, bomb, args.bombs),
        }
        body = sample_body("small", 1)
        cpu = gateway.cpu_seconds()
        results["callbacks_without_bombs"] = await callbacks(port, services.token, body, args.seconds)
        results["callbacks_without_bombs"]["gateway_cpu_seconds"] = round(gateway.cpu_seconds() - cpu, 2)
        stop = threading.Event()
        threads, sent = bomb_clients(port, bomb, 4, stop)
        cpu = gateway.cpu_seconds()
        try:
            results["callbacks_with_4_bomb_clients"] = await callbacks(port, services.token, body, args.seconds)
            results["callbacks_with_4_bomb_clients"]["gateway_cpu_seconds"] = round(gateway.cpu_seconds() - cpu, 2)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        results["bombs_sent_meanwhile"] = len(sent)
        results["bomb_statuses"] = {str(s): sent.count(s) for s in sorted(set(sent))}
        quiet = results["callbacks_without_bombs"]["latency_ms"]["p99"]
        loud = results["callbacks_with_4_bomb_clients"]["latency_ms"]["p99"]
        results["p99_ratio_with_bombs"] = round(loud / quiet, 2) if quiet else None
    finally:
        for proc in procs:
            proc.stop()
        await services.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="each latency window (default 10)")
    parser.add_argument("--bombs", type=int, default=3, help="bombs per refusal kind (default 3)")
    parser.add_argument("--out", type=Path, help="keep the gateways' logs here (default: a temporary directory)")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run(args, args.out))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = asyncio.run(run(args, Path(tmp)))
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
