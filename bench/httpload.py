"""Python HTTP load generators, each run in its own process; prints one JSON line.

``closed``: N connections, each POSTing as soon as its previous answer came
back (the fallback when wrk is not installed; wrk is far cheaper per request).

``open``: a fixed arrival rate regardless of answers (no coordinated omission:
latency counts from the scheduled send time), every body a new analysis, and
the end-to-end lag: from each 2xx until its callback's rows are committed and
visible, found by polling PostgreSQL for the ids still pending every 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path

import aiohttp


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    s = sorted(values)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": s[-1], "mean": sum(s) / len(s)}


async def closed(url: str, body: bytes, content_type: str, connections: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.monotonic() + duration

        async def one() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": content_type}) as r:
                    await r.read()
                    if r.status >= 400:
                        errors += 1
                latencies.append(time.perf_counter() - t)

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(connections)))
        elapsed = time.monotonic() - started
    p = _percentiles(latencies)
    return {
        "requests": len(latencies), "duration_us": int(elapsed * 1e6), "status_errors": errors,
        "connect_errors": 0, "read_errors": 0, "write_errors": 0, "timeouts": 0,
        **{f"{k}_us": int(v * 1e6) for k, v in p.items() if k != "mean"}, "mean_us": p["mean"] * 1e6,
    }


async def open_loop(url: str, templates: list[tuple[bytes, str, str]], content_type: str, rate: float,
                    duration: float, database_url: str, drain_timeout: float) -> dict:
    import asyncpg

    total = int(rate * duration)
    sent_at: dict[uuid.UUID, float] = {}  # id -> time its 2xx arrived
    gateway_latency: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
    pending: set[uuid.UUID] = set()
    nonce = uuid.uuid4().int & 0xFFFFFFFF

    def make(n: int) -> bytes:
        body, analysis_id, job_id = templates[n % len(templates)]
        return body.replace(analysis_id.encode(), f"{nonce:08x}-0000-4000-a000-{n:012x}".encode()).replace(
            job_id.encode(), f"{nonce:08x}-0000-4000-b000-{n:012x}".encode())

    conn = await asyncpg.connect(database_url)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(n: int, scheduled: float) -> None:
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = make(n)  # built at send time: a backlog of bodies would be the generator's memory
            try:
                async with session.post(url, data=body, headers={"Content-Type": content_type}) as r:
                    answer = await r.read()
                    now = time.monotonic()
                    if r.status != 202:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                        return
            except aiohttp.ClientError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            gateway_latency.append(now - scheduled)
            message_id = uuid.UUID(json.loads(answer)["id"])
            sent_at[message_id] = now
            pending.add(message_id)

        stop_polling = asyncio.Event()

        async def poll() -> None:
            while not (stop_polling.is_set() and not pending):
                await asyncio.sleep(0.02)
                if not pending:
                    continue
                ids = list(pending)
                rows = await conn.fetch("SELECT id FROM flowscribe.callbacks WHERE id = ANY($1::uuid[])", ids)
                now = time.monotonic()
                for (found,) in rows:
                    pending.discard(found)
                    lags.append(now - sent_at[found])

        poller = asyncio.create_task(poll())
        start = time.monotonic() + 0.2
        tasks = [asyncio.create_task(send(n, start + n / rate)) for n in range(total)]
        await asyncio.gather(*tasks)
        sent_done = time.monotonic()
        stop_polling.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(poller, drain_timeout)
        server_lag = await conn.fetch(
            "SELECT extract(epoch FROM processed_at - received_at) AS lag FROM flowscribe.callbacks"
            " WHERE id = ANY($1::uuid[])", list(sent_at))
    await conn.close()
    g, c = _percentiles(gateway_latency), _percentiles(lags)
    s = _percentiles([float(r["lag"]) for r in server_lag])
    return {
        "rate": rate, "offered": total, "accepted": len(sent_at), "errors": errors,
        "send_seconds": round(sent_done - start, 3),
        "achieved_rate": round(len(sent_at) / (sent_done - start), 1),
        "not_committed": len(pending),
        "gateway_latency_ms": {k: round(v * 1000, 2) for k, v in g.items()},
        "lag_ms": {k: round(v * 1000, 1) for k, v in c.items()},
        "server_lag_ms": {k: round(v * 1000, 1) for k, v in s.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("closed")
    c.add_argument("url")
    c.add_argument("body_file")
    c.add_argument("content_type")
    c.add_argument("--connections", type=int, default=64)
    c.add_argument("--duration", type=float, default=10)
    o = sub.add_parser("open")
    o.add_argument("url")
    o.add_argument("templates", help="JSON file: [[body_file, analysis_id, job_id], ...]")
    o.add_argument("content_type")
    o.add_argument("--rate", type=float, required=True)
    o.add_argument("--duration", type=float, default=20)
    o.add_argument("--database-url", required=True)
    o.add_argument("--drain-timeout", type=float, default=30)
    args = parser.parse_args()
    if args.mode == "closed":
        result = asyncio.run(closed(args.url, Path(args.body_file).read_bytes(), args.content_type,
                                    args.connections, args.duration))
    else:
        templates = [(Path(f).read_bytes(), a, j) for f, a, j in json.loads(Path(args.templates).read_text())]
        result = asyncio.run(open_loop(args.url, templates, args.content_type, args.rate, args.duration,
                                       args.database_url, args.drain_timeout))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
