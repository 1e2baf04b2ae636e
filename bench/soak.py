"""``python -m bench.soak``: a steady load at half capacity on a 3-node RabbitMQ cluster, one node killed every few minutes.

    python -m bench.soak                                  # the soak: 20 min, a kill -9 every 3 min
    python -m bench.soak --minutes 2 --kill-every 40      # a short run, to see that it works

Two gateway and three worker processes (the product's own commands, through
bench.launch) are given every node of a private cluster (the fault suite's,
tests/faults/servers.py); the stack's capacity is measured first (a closed
loop through both gateways) and the soak sends half of it, paced, as a sender
that waits for its answers as long as .NET's HttpClient does (100 s). Every
``--kill-every`` seconds a node is killed (``kill -9``), left dead for
``--down`` seconds and started again. At the end the fault suite's checker
accounts for every callback (tests/faults/checker.py: lost, duplicated,
unexpected), and the report gives the refusals, the RSS of every process
(first sample after the warm-up, last, growth), and the p99 time to a 202 in
the minute before each kill, while its node was down, and in the minute after.
The figures go to stdout and ``<out>/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.harness import OUT, start_gateway, start_worker
from bench.httpload import _percentiles, closed
from bench.services import Proc, Services
from runtime.amqp import connect_any
from tests.faults.checker import History, callback_body, check, send_callbacks, wait_until_accounted
from tests.faults.servers import PrivateRabbitMQCluster

WINDOW = 60.0  # seconds before a kill and after its node is back, for the p99 around it
SAMPLE_EVERY = 10.0  # seconds between RSS samples


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


class RssLog:
    """RSS of every process of the soak, sampled; a dead broker node reads 0 until it is back."""

    def __init__(self, procs: list[Proc], cluster: PrivateRabbitMQCluster) -> None:
        self.procs, self.cluster = procs, cluster
        self.samples: list[tuple[float, dict[str, int]]] = []

    def sample(self) -> None:
        now: dict[str, int] = {p.name: p.rss() for p in self.procs}
        for i, node in enumerate(self.cluster.nodes):
            now[f"rabbitmq-{i}"] = _rss([pid for pid, *_ in node.pids])
        self.samples.append((time.monotonic(), now))

    def growth(self, after: float) -> dict[str, dict[str, float]]:
        kept = [s for t, s in self.samples if t >= after] or [s for _, s in self.samples]
        first, last = kept[0], kept[-1]
        return {
            name: {"first_mb": round(first[name] / 2**20, 1), "last_mb": round(last[name] / 2**20, 1),
                   "growth_mb": round((last[name] - first[name]) / 2**20, 1)}
            for name in first
        }


def p99(history: History, start: float, end: float) -> float | None:
    waits = [w for at, w in history.ok_latencies if start <= at < end]
    return round(_percentiles(waits)["p99"], 3) if waits else None


def killing(cluster: PrivateRabbitMQCluster, every: float, down: float, stop: threading.Event,
            kills: list[dict[str, Any]], rng: random.Random) -> None:
    """In a thread: a random node killed every ``every`` seconds, started again after ``down``."""
    while not stop.wait(every):
        node = rng.choice(cluster.nodes)
        killed = time.monotonic()
        node.kill()
        stop.wait(down)
        node.start()
        cluster.wait_until_clustered()
        kills.append({"node": cluster.nodes.index(node), "killed": killed, "back": time.monotonic()})


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    services = Services()
    await services.open()  # the database (its vhost on the machine's broker goes unused)
    cluster = PrivateRabbitMQCluster(Path(tempfile.mkdtemp(prefix="soak-cluster-")))
    procs: list[Proc] = []
    try:
        await asyncio.to_thread(cluster.start)
        ports = []
        for i in range(2):
            proc, port = await asyncio.to_thread(
                functools.partial(start_gateway, services, out, f"gateway-{i}", amqp_url=cluster.urls))
            procs.append(proc)
            ports.append(port)
        for i in range(3):
            procs.append(await asyncio.to_thread(
                functools.partial(start_worker, services, out, f"worker-{i}", amqp_url=cluster.urls)))
        urls = [f"http://127.0.0.1:{port}/flowscribe/callback/{services.token}" for port in ports]
        history = History()

        # Capacity: a closed loop through both gateways, with one callback sent over and over
        # (stored once, then `duplicate`s): accounted for like the soak's own.
        probe = uuid.uuid4()
        body = callback_body(probe)
        measured = await asyncio.gather(*(closed(url, body, "application/json", 8, args.measure) for url in urls))
        capacity = sum(m["requests"] for m in measured) / args.measure
        history.results[probe] = "ok"
        rate = args.rate or capacity / 2
        print(f"capacity {capacity:.0f} callbacks/s; soaking at {rate:.0f}/s for {args.minutes} min", flush=True)

        rss = RssLog(procs, cluster)
        stop = threading.Event()
        kills: list[dict[str, Any]] = []
        done = asyncio.Event()
        began = time.monotonic()
        async with aiohttp.ClientSession() as http:
            enough = int(rate * args.minutes * 60 * 2) + 1000  # the load ends by time, not by count
            sending = asyncio.create_task(send_callbacks(
                http, urls, enough, concurrency=32, rate=rate, request_timeout=100.0, retry_for=120.0,
                history=history, until=done, seed=random.randrange(2**32)))
            killer = threading.Thread(target=killing, args=(cluster, args.kill_every, args.down, stop, kills,
                                                            random.Random()), daemon=True)
            killer.start()
            while time.monotonic() - began < args.minutes * 60:
                rss.sample()
                await asyncio.sleep(SAMPLE_EVERY)  # the sampling period
            stop.set()
            await asyncio.to_thread(killer.join)
            done.set()
            await sending
        rss.sample()

        connection = await connect_any(cluster.urls, "soak", timeout=10)
        async with connection, asyncpg.create_pool(services.database_url, min_size=1, max_size=2) as db:
            channel = await connection.channel()
            await wait_until_accounted(history, db, channel, timeout=300)
            for proc in procs:
                if proc.name.startswith("worker"):
                    proc.stop()
            verdict = await check(history, db, channel)
        return {
            "minutes": args.minutes, "capacity_per_s": round(capacity, 1), "rate_per_s": round(rate, 1),
            "kill_every_s": args.kill_every, "down_s": args.down,
            "sent": verdict.sent, "refusals": history.refusals, "answers": dict(history.statuses),
            "lost": verdict.lost, "duplicated": verdict.duplicated, "unexpected": verdict.unexpected,
            "queued": verdict.queued, "passed": verdict.passed,
            "longest_wait_for_202_s": round(history.slowest_ok, 2),
            "kills": [
                {"node": k["node"], "at_s": round(k["killed"] - began, 1), "down_s": round(k["back"] - k["killed"], 1),
                 "p99_before_s": p99(history, k["killed"] - WINDOW, k["killed"]),
                 "p99_during_s": p99(history, k["killed"], k["back"]),
                 "p99_after_s": p99(history, k["back"], k["back"] + WINDOW)}
                for k in kills
            ],
            # From the second sample on: the first holds start-up, not growth.
            "rss": rss.growth(began + SAMPLE_EVERY),
        }
    finally:
        for proc in procs:
            proc.stop()
        await asyncio.to_thread(cluster.close)
        await services.close()


async def until_signalled(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``work``; SIGTERM or SIGINT cancels it, so that its clean-up (processes, cluster,
    database) still runs."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the load runs (default 20)")
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds between kills (default 180)")
    parser.add_argument("--down", type=float, default=20.0, help="seconds a killed node stays dead (default 20)")
    parser.add_argument("--rate", type=float, default=0.0, help="callbacks/s (default: half the measured capacity)")
    parser.add_argument("--measure", type=float, default=10.0, help="seconds of the capacity measurement")
    parser.add_argument("--out", default=str(OUT / "soak"), help="logs and soak.json (default bench/out/soak)")
    args = parser.parse_args()
    report = asyncio.run(until_signalled(soak(args)))
    text = json.dumps(report, indent=2)
    print(text)
    (Path(args.out) / "soak.json").write_text(text + "\n")
    return 0 if report["passed"] and report["refusals"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
