"""The bench's phases and the helpers they share (``python -m bench`` runs them: bench/__main__.py).

Phases (each a function below; results go to bench/out/results.json as they come):

- decode: ``decode_payload`` of the same typical payloads as JSON and as XML (CPU time, in turns);
- gateway: callbacks/s and latency per size; HTTP ceiling (same app, publish a no-op) and broker
  ceiling (same messages straight to RabbitMQ, same concurrency) measured right before and after;
- worker: drain of a pre-filled queue per size (and typical XML); raw COPY ceiling and naive baseline;
- scaling: 1 vs 2 worker processes on the same backlog;
- e2e: the sustained maximum of gateway + worker together, then the lag at half of it;
- backlog: a worker's peak RSS while draining a large backlog;
- memory (only with ``--only memory``): a worker's peak RSS under a flood of maximum-size
  callbacks with the default byte and row budgets and without them, and the drain rate of
  ordinary callbacks with and without them (interleaved, same run).

Then RESULTS.md and results.png are written next to this file (bench/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from bench import copy_ceiling, payloads
from bench.services import (
    ROOT,
    Proc,
    Services,
    Window,
    free_port,
    machine,
    postgres_version,
    python_argv,
    wait_http_ready,
)
from store.rows import CHILD_COLUMNS

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CALLBACK = "/flowscribe/callback/"
TEMPLATES = 8  # distinct payloads per size; load uses fresh-id variants of them
# FLOWSCRIBE_GATEWAY_PROCESSES of the multi-process gateway runs: one per core (at least two).
GATEWAY_PROCESSES = max(2, os.cpu_count() or 2)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    gateway_seconds: float
    warmup_seconds: float
    concurrency: dict[str, int]
    worker_n: dict[str, int]
    xml_n: int
    naive_n: dict[str, int]
    scaling_n: int
    e2e_sizes: tuple[str, ...]
    e2e_max_seconds: float
    e2e_half_seconds: float
    backlog: int
    repeats: int  # gateway and its ceilings, interleaved, averaged: drift hits all alike
    memory_flood: int  # maximum-size callbacks in the memory phase's flood


FULL = Config(
    name="full", gateway_seconds=8, warmup_seconds=2,
    concurrency={"small": 64, "typical": 32, "large": 8},
    worker_n={"small": 3000, "typical": 400, "large": 40}, xml_n=400,
    naive_n={"small": 200, "typical": 20, "large": 3},
    scaling_n=1200, e2e_sizes=("small", "typical"), e2e_max_seconds=10, e2e_half_seconds=20,
    backlog=100_000, repeats=2, memory_flood=12,
)
QUICK = Config(
    name="quick", gateway_seconds=4, warmup_seconds=1,
    concurrency=FULL.concurrency,
    worker_n={"small": 1000, "typical": 120, "large": 12}, xml_n=120,
    naive_n={"small": 60, "typical": 6, "large": 1},
    scaling_n=500, e2e_sizes=("small", "typical"), e2e_max_seconds=4, e2e_half_seconds=8,
    backlog=10_000, repeats=1, memory_flood=6,
)


def say(*parts: object) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


# --- bodies ----------------------------------------------------------------------------


class Bodies:
    """Per size: TEMPLATES distinct payloads, their JSON/XML files, and endless fresh variants."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = {size: [payloads.build(size, seed) for seed in range(TEMPLATES)] for size in payloads.SIZES}
        self.rendered: dict[tuple[str, str], list[bytes]] = {}
        for size, items in self.data.items():
            for fmt in ("json", "xml"):
                self.rendered[size, fmt] = [payloads.render(d, fmt) for d in items]
                for i, b in enumerate(self.rendered[size, fmt]):
                    (directory / f"{size}-{i}.{fmt}").write_bytes(b)

    def file(self, size: str, fmt: str = "json", i: int = 0) -> Path:
        return self.dir / f"{size}-{i}.{fmt}"

    def ids(self, size: str, i: int = 0) -> tuple[str, str]:
        d = self.data[size][i]
        return d["ConversationAnalysisModel"]["ID"], d["JobStatus"]["JobID"]

    def mean_bytes(self, size: str, fmt: str = "json") -> int:
        r = self.rendered[size, fmt]
        return sum(map(len, r)) // len(r)

    def variants(self, size: str, fmt: str, start: int = 0) -> Iterator[tuple[bytes, int]]:
        """(body, rows) with a new analysis and job each time."""
        for n in itertools.count(start):
            k = n % TEMPLATES
            yield payloads.variant(self.rendered[size, fmt][k], self.data[size][k], n), payloads.rows_of(self.data[size][k])


# --- helpers ----------------------------------------------------------------------------


async def prefill(services: Services, bodies: Iterator[tuple[bytes, int]], n: int, content_type: str,
                  concurrency: int = 200) -> int:
    """Publish ``n`` bodies exactly as the gateway does (its own publish_callback); returns their rows."""
    from gateway.publisher import publish_callback
    from runtime.amqp import BrokerSession
    from schemas import topology

    rows = 0
    remaining = iter(range(n))
    async with BrokerSession(services.amqp_url, "bench-prefill", declare=topology.declare) as broker:
        await broker.wait_ready(30)

        async def publisher() -> None:
            nonlocal rows
            for _ in remaining:
                body, r = next(bodies)
                rows += r
                await publish_callback(broker, body, content_type, 30)

        await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return rows


def start_gateway(services: Services, out: Path, name: str, *flags: str, port: int | None = None,
                  **settings: Any) -> tuple[Proc, int]:
    port = port or free_port()
    proc = Proc(name, python_argv("bench.launch", "gateway", *flags),
                services.env(gateway_port=port, **settings), out)
    wait_http_ready(port)
    return proc, port


def start_worker(services: Services, out: Path, name: str, *flags: str, **settings: Any) -> Proc:
    proc = Proc(name, python_argv("bench.launch", "worker", *flags), services.env(**settings), out)
    proc.wait_for_event("consuming")
    return proc


def event_time(proc: Proc, event: str) -> float:
    for e in proc.log_events():
        if e.get("event") == event:
            return datetime.datetime.fromisoformat(e["ts"]).timestamp()
    raise LookupError(event)


class CommitWatcher:
    """Follows workers' "batch committed" log lines: how many landed, and when the n-th did."""

    def __init__(self, procs: list[Proc]) -> None:
        self._files = [open(p.log_path, "rb") for p in procs]  # noqa: SIM115 - closed in close()
        self.messages = 0
        self.last_ts = 0.0
        self.events: list[tuple[float, int]] = []  # (commit time, messages)

    def poll(self) -> int:
        for f in self._files:
            for line in f.readlines():
                if b'"batch committed"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    e = json.loads(line)
                    ts = datetime.datetime.fromisoformat(e["ts"]).timestamp()
                    self.messages += e["messages"]
                    self.last_ts = max(self.last_ts, ts)
                    self.events.append((ts, e["messages"]))
        return self.messages

    def wait(self, n: int, timeout: float, procs: list[Proc]) -> float:
        deadline = time.monotonic() + timeout
        while self.poll() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.messages}/{n} committed after {timeout}s")
            if not all(p.alive() for p in procs):
                raise RuntimeError("a worker exited during the drain")
            time.sleep(0.02)
        return self.last_ts

    def committed_between(self, start: float, end: float) -> int:
        self.poll()
        return sum(n for ts, n in self.events if start <= ts < end)

    def close(self) -> None:
        for f in self._files:
            f.close()


def batch_ms(procs: list[Proc]) -> dict[str, float]:
    """Mean "batch committed" time of the first and the last tenth of a drain's batches (does it degrade?)."""
    ms = [e["ms"] for p in procs for e in p.log_events() if e.get("event") == "batch committed"]
    if len(ms) < 10:
        return {}
    tenth = len(ms) // 10
    return {"batches": len(ms), "first_tenth": round(sum(ms[:tenth]) / tenth, 1),
            "last_tenth": round(sum(ms[-tenth:]) / tenth, 1)}


async def db_counts(services: Services) -> dict[str, Any]:
    conn = await asyncpg.connect(services.database_url)
    try:
        counted = await conn.fetch("SELECT outcome, count(*) FROM flowscribe.callbacks GROUP BY 1")
        outcomes = {r["outcome"]: r["count"] for r in counted}
        rows = 0
        for table in ("callbacks", "jobs", "analyses", *CHILD_COLUMNS):
            rows += await conn.fetchval(f"SELECT count(*) FROM flowscribe.{table}")
        return {"outcomes": outcomes, "rows": rows}
    finally:
        await conn.close()


def wrk_available() -> bool:
    if shutil.which("wrk"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing wrk from Debian packages (the HTTP load generator)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") is not None


def load(out: Path, name: str, url: str, body_file: Path, content_type: str, connections: int, seconds: float,
         server: Proc | None, variant_ids: tuple[str, str] | None = None) -> dict[str, Any]:
    """One closed-loop run: wrk (or the Python generator); rate of 2xx, latency, CPU of everyone."""
    if wrk_available():
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(HERE / "wrk.lua"),
                url, "--", str(body_file), content_type]
        argv += ["variant", *variant_ids, str(int.from_bytes(os.urandom(4), "big"))] if variant_ids else ["fixed"]
        generator = "wrk"
    else:
        argv = python_argv("bench.httpload", "closed", url, str(body_file), content_type,
                           "--connections", str(connections), "--duration", str(seconds))
        generator = "python-aiohttp"
    procs = {"server": server} if server is not None else {}
    with Window(procs) as window:
        gen = Proc(name, argv, os.environ | {"PYTHONPATH": str(ROOT)}, out)
        gen.wait(seconds + 60)
    summary = window.summary()
    ru = gen.rusage
    summary["cpu_percent"]["loadgen"] = round(100 * (ru.ru_utime + ru.ru_stime) / summary["seconds"], 1)
    lines = [line for line in gen.log_path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{name}: no result line; see {gen.log_path}")
    r = json.loads(lines[-1])
    seconds_run = r["duration_us"] / 1e6
    errors = r["status_errors"] + r.get("connect_errors", 0) + r.get("read_errors", 0) + r.get("timeouts", 0)
    return {
        "generator": generator, "connections": connections,
        "requests": r["requests"], "errors": errors,
        "rate": round((r["requests"] - errors) / seconds_run, 1),
        "p50_ms": round(r["p50_us"] / 1000, 2), "p99_ms": round(r["p99_us"] / 1000, 2),
        **summary,
    }


def broker_ceiling(services: Services, out: Path, name: str, body_file: Path, content_type: str,
                   concurrency: int, seconds: float, warmup: float, processes: int = 1) -> dict[str, Any]:
    """``processes`` publishers at once (``concurrency`` split among them, each its own connection),
    as a gateway with as many processes; rates add up, latency percentiles are the worst of them."""
    publishers = {}
    for i in range(processes):
        argv = python_argv("bench.broker_ceiling", services.amqp_url, str(body_file), content_type,
                           "--concurrency", str(concurrency // processes), "--duration", str(seconds),
                           "--warmup", str(warmup))
        publishers[f"publisher-{i}"] = Proc(f"{name}-{i}" if processes > 1 else name, argv,
                                            os.environ | {"PYTHONPATH": str(ROOT)}, out)
    time.sleep(warmup + 0.3)  # connect + warm-up, then measure CPU over the measured part
    with Window(publishers) as window:
        for publisher in publishers.values():
            publisher.wait(seconds + 60)
    summary = window.summary()
    summary["cpu_percent"]["publisher"] = round(sum(summary["cpu_percent"].pop(k) for k in publishers), 1)
    results = []
    for publisher in publishers.values():
        lines = [line for line in publisher.log_path.read_text().splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]))
    return {
        "concurrency": concurrency, "processes": processes,
        "requests": sum(r["requests"] for r in results), "errors": sum(r["status_errors"] for r in results),
        "rate": round(sum(r["requests"] / (r["duration_us"] / 1e6) for r in results), 1),
        "p50_ms": round(max(r["p50_us"] for r in results) / 1000, 2),
        "p99_ms": round(max(r["p99_us"] for r in results) / 1000, 2),
        "publisher_cpu_lifetime_s": round(sum((p.rusage.ru_utime + p.rusage.ru_stime
                                               for p in publishers.values()), 0.0), 2),
        **summary,
    }


def _mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one measurement: rates and latencies averaged, CPU averaged, every repeat kept."""
    out = dict(runs[-1])
    for key in ("rate", "p50_ms", "p99_ms", "machine_busy_percent"):
        out[key] = round(sum(r[key] for r in runs) / len(runs), 2)
    out["cpu_percent"] = {k: round(sum(r["cpu_percent"].get(k, 0) for r in runs) / len(runs), 1)
                          for k in runs[-1]["cpu_percent"]}
    out["errors"] = sum(r["errors"] for r in runs)
    out["repeats"] = [r["rate"] for r in runs]
    return out


# --- phases -------------------------------------------------------------------------------


async def phase_decode(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    """``decode_payload`` of the same typical payloads as JSON and as XML, in this process, in turns.

    CPU time (``process_time``) per 100 payloads, the best of each turn's repeats, so that
    other work on a shared machine counts as little as it can; the ratio is per turn.
    """
    from schemas.decoding import decode_payload

    rounds = 3 if cfg.name == "quick" else 7
    per: dict[str, list[float]] = {"json": [], "xml": []}
    for _ in range(rounds):
        for fmt in ("json", "xml"):
            sample = bodies.rendered["typical", fmt]
            content_type = payloads.CONTENT_TYPES[fmt]
            best = float("inf")
            for _ in range(3):
                t = time.process_time()
                for body in sample:
                    decode_payload(body, content_type)
                best = min(best, time.process_time() - t)
            per[fmt].append(1000 * best * 100 / len(sample))
    ratios = sorted(x / j for j, x in zip(per["json"], per["xml"], strict=True))
    r = {"json_ms_per_100": per["json"], "xml_ms_per_100": per["xml"], "xml_over_json": ratios[len(ratios) // 2]}
    say(f"decode typical: JSON {min(per['json']):.0f} ms, XML {min(per['xml']):.0f} ms per 100;"
        f" XML / JSON = {r['xml_over_json']:.2f}x (median of {rounds} turns)")
    return r


async def phase_gateway(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    """The gateway as one process and as one per core (FLOWSCRIBE_GATEWAY_PROCESSES), each beside
    the broker ceiling with as many publishing processes; the HTTP ceiling is one process."""
    results: dict[str, Any] = {"processes": GATEWAY_PROCESSES}
    gateway, gw_port = start_gateway(services, out, "gateway")
    multi, multi_port = start_gateway(services, out, "gateway-processes", gateway_processes=GATEWAY_PROCESSES)
    noop, noop_port = start_gateway(services, out, "gateway-noop-publish", "--noop-publish")
    servers: tuple[tuple[str, int, Proc], ...] = (
        ("http_ceiling", noop_port, noop), ("gateway", gw_port, gateway), ("gateway_processes", multi_port, multi))
    if os.environ.get("BENCH_GUNICORN"):
        # An evaluation beside the product's own supervisor, interleaved with it (bench/README.md).
        gunicorn, gunicorn_port = start_gateway(services, out, "gateway-gunicorn", "--gunicorn",
                                                gateway_processes=GATEWAY_PROCESSES)
        servers += (("gateway_gunicorn", gunicorn_port, gunicorn),)
    try:
        for size in payloads.SIZES:
            conns = cfg.concurrency[size]
            body = bodies.file(size)
            say(f"gateway {size}: {bodies.mean_bytes(size):,} B bodies, {conns} connections")
            r: dict[str, Any] = {"bytes": body.stat().st_size, "connections": conns}
            runs: dict[str, list[dict[str, Any]]] = {
                label: [] for label in (*(s[0] for s in servers), "broker_ceiling", "broker_ceiling_processes")}
            for rep in range(cfg.repeats):
                for label, port, proc in servers:
                    url = f"http://127.0.0.1:{port}{CALLBACK}{services.token}"
                    load(out, f"warmup-{label}-{size}-{rep}", url, body, "application/json", conns,
                         cfg.warmup_seconds, proc)
                    x = load(out, f"wrk-{label}-{size}-{rep}", url, body, "application/json", conns,
                             cfg.gateway_seconds, proc)
                    runs[label].append(x)
                    await services.purge()
                    say(f"  {label}: {x['rate']:,.0f}/s p50 {x['p50_ms']} ms p99 {x['p99_ms']} ms"
                        f" (loadgen {x['cpu_percent']['loadgen']}% CPU, server {x['cpu_percent']['server']}%)")
                for label, processes in (("broker_ceiling", 1), ("broker_ceiling_processes", GATEWAY_PROCESSES)):
                    x = broker_ceiling(services, out, f"{label.replace('_', '-')}-{size}-{rep}", body,
                                       "application/json", conns, cfg.gateway_seconds, cfg.warmup_seconds,
                                       processes)
                    runs[label].append(x)
                    await services.purge()
                    say(f"  {label}: {x['rate']:,.0f}/s p50 {x['p50_ms']} ms p99 {x['p99_ms']} ms"
                        f" (publisher {x['cpu_percent']['publisher']}% CPU, broker {x['cpu_percent']['broker']}%)")
            for label, xs in runs.items():
                r[label] = _mean_run(xs)
            results[size] = r
    finally:
        for _label, _port, proc in servers:
            proc.stop()
    results["gateway_peak_rss_mb"] = round(gateway.peak_rss / 2**20, 1)
    results["gateway_processes_peak_rss_mb"] = round(multi.peak_rss / 2**20, 1)
    results["noop_peak_rss_mb"] = round(noop.peak_rss / 2**20, 1)
    return results


async def drain(services: Services, out: Path, name: str, bodies: Iterator[tuple[bytes, int]], n: int,
                content_type: str, workers: int = 1, flags: tuple[str, ...] = (), **settings: Any) -> dict[str, Any]:
    """Pre-fill ``n`` messages, start ``workers`` worker processes, time until all are committed."""
    await services.reset()
    t = time.monotonic()
    rows = await prefill(services, bodies, n, content_type)
    say(f"  {name}: queued {n} in {time.monotonic() - t:.1f}s; draining with {workers} worker(s)")
    procs = [Proc(f"{name}-{i}", python_argv("bench.launch", "worker", *flags), services.env(**settings), out)
             for i in range(workers)]
    try:
        watcher = CommitWatcher(procs)
        for p in procs:
            p.wait_for_event("consuming", 60)
        started = min(event_time(p, "consuming") for p in procs)
        with Window({f"worker{i}": p for i, p in enumerate(procs)}) as window:
            finished = watcher.wait(n, 900, procs)
        watcher.close()
    finally:
        for p in procs:
            p.stop()
    seconds = finished - started
    counts = await db_counts(services)
    ok = counts["outcomes"].get("ingested", 0) == n and counts["rows"] == rows
    r = {"payloads": n, "rows": rows, "seconds": round(seconds, 3), "payloads_per_s": round(n / seconds, 1),
         "rows_per_s": round(rows / seconds), "verified": ok, "db": counts, **window.summary(),
         "peak_rss_mb": {p.name: round(p.peak_rss / 2**20, 1) for p in procs},
         "batch_ms": batch_ms(procs)}
    say(f"  {name}: {r['payloads_per_s']:,.1f} payloads/s, {r['rows_per_s']:,} rows/s,"
        f" peak RSS {max(r['peak_rss_mb'].values())} MB, verified={ok}")
    return r


async def naive(services: Services, out: Path, name: str, bodies: Iterator[tuple[bytes, int]], n: int) -> dict[str, Any]:
    await services.reset()
    rows = await prefill(services, bodies, n, "application/json")
    proc = Proc(name, python_argv("bench.naive_worker", services.amqp_url, services.database_url),
                os.environ | {"PYTHONPATH": str(ROOT)}, out)
    conn = await asyncpg.connect(services.database_url)
    try:
        with Window({"naive": proc}) as window:
            proc.wait_for_event("consuming", 60)
            started = time.time()
            while (done := await conn.fetchval("SELECT count(*) FROM flowscribe.callbacks")) < n:
                if time.time() - started > 600 or not proc.alive():
                    raise RuntimeError(f"naive baseline: {done}/{n} after {time.time() - started:.0f}s")
                await asyncio.sleep(0.05)
            seconds = time.time() - started
    finally:
        await conn.close()
        proc.stop(5)
    r = {"payloads": n, "rows": rows, "seconds": round(seconds, 3), "payloads_per_s": round(n / seconds, 2),
         "rows_per_s": round(rows / seconds), **window.summary()}
    say(f"  {name}: {r['payloads_per_s']} payloads/s, {r['rows_per_s']:,} rows/s")
    return r


async def phase_worker(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    runs = [(size, "json", cfg.worker_n[size]) for size in payloads.SIZES] + [("typical", "xml", cfg.xml_n)]
    for size, fmt, n in runs:
        key = f"{size}-{fmt}"
        say(f"worker {key}: {n} payloads of {bodies.mean_bytes(size, fmt):,} B")
        content_type = payloads.CONTENT_TYPES[fmt]
        r: dict[str, Any] = {"bytes": bodies.mean_bytes(size, fmt)}
        r["worker"] = await drain(services, out, f"worker-{key}", bodies.variants(size, fmt), n, content_type)
        await services.reset()
        sample = list(itertools.islice(bodies.variants(size, fmt, start=10**6), n))
        r["copy_ceiling"] = await copy_ceiling.run(services.database_url, [(b, content_type) for b, _ in sample], 100)
        say(f"  copy ceiling: {r['copy_ceiling']['payloads_per_s']:,.1f} payloads/s,"
            f" {r['copy_ceiling']['rows_per_s']:,.0f} rows/s")
        if fmt == "json":
            r["naive"] = await naive(services, out, f"naive-{key}", bodies.variants(size, fmt), cfg.naive_n[size])
        results[key] = r
    return results


async def phase_scaling(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    say(f"scaling: {cfg.scaling_n} typical payloads, 1 then 2 workers")
    one = await drain(services, out, "scaling-1", bodies.variants("typical", "json"), cfg.scaling_n, "application/json")
    two = await drain(services, out, "scaling-2", bodies.variants("typical", "json"), cfg.scaling_n,
                      "application/json", workers=2)
    return {"one": one, "two": two, "speedup": round(two["rows_per_s"] / one["rows_per_s"], 2)}


async def phase_e2e(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size in cfg.e2e_sizes:
        conns = cfg.concurrency[size]
        say(f"e2e {size}: gateway + worker; sustained maximum, then half of it")
        # 1. Flat out: the gateway as fast as it goes while the worker lands what it can. The
        #    sustained maximum is what gets committed end to end meanwhile (after a 1 s lead-in);
        #    whatever the gateway accepts beyond it only grows the queue.
        await services.reset()
        gateway, port = start_gateway(services, out, f"e2e-max-gateway-{size}")
        worker = start_worker(services, out, f"e2e-max-worker-{size}")
        url = f"http://127.0.0.1:{port}{CALLBACK}{services.token}"
        try:
            watcher = CommitWatcher([worker])
            t0 = time.time()
            with Window({"gateway": gateway, "worker": worker}) as window:
                peak = load(out, f"e2e-max-{size}", url, bodies.file(size), "application/json", conns,
                            cfg.e2e_max_seconds, None, variant_ids=bodies.ids(size))
            lead_in = 1.0
            committed = watcher.committed_between(t0 + lead_in, t0 + cfg.e2e_max_seconds)
            watcher.close()
        finally:
            gateway.stop()
            worker.stop()
        sustained = committed / (cfg.e2e_max_seconds - lead_in)
        peak.update(window.summary())
        peak.update({"accepted_rate": peak["rate"], "sustained_rate": round(sustained, 1)})
        say(f"  flat out: gateway accepted {peak['rate']:,.0f}/s; committed end to end {sustained:,.0f}/s")
        # 2. Half of it, open loop, on fresh processes and an empty queue.
        await services.reset()
        gateway, port = start_gateway(services, out, f"e2e-half-gateway-{size}")
        worker = start_worker(services, out, f"e2e-half-worker-{size}")
        url = f"http://127.0.0.1:{port}{CALLBACK}{services.token}"
        half = sustained / 2
        try:
            templates = out / f"e2e-templates-{size}.json"
            templates.write_text(json.dumps([[str(bodies.file(size, "json", i)), *bodies.ids(size, i)]
                                             for i in range(TEMPLATES)]))
            argv = python_argv("bench.httpload", "open", url, str(templates), "application/json",
                               "--rate", f"{half:.2f}", "--duration", str(cfg.e2e_half_seconds),
                               "--database-url", services.database_url)
            with Window({"gateway": gateway, "worker": worker}) as window:
                gen = Proc(f"e2e-half-{size}", argv, os.environ | {"PYTHONPATH": str(ROOT)}, out)
                gen.wait(cfg.e2e_half_seconds + 120)
        finally:
            gateway.stop()
            worker.stop()
        lines = [line for line in gen.log_path.read_text().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"open-loop generator gave no result; see {gen.log_path}")
        halfr = json.loads(lines[-1]) | window.summary()
        ru = gen.rusage
        halfr["cpu_percent"]["loadgen"] = round(100 * (ru.ru_utime + ru.ru_stime) / halfr["seconds"], 1)
        say(f"  half ({half:,.0f}/s): lag p50 {halfr['lag_ms']['p50']} ms p99 {halfr['lag_ms']['p99']} ms,"
            f" not committed {halfr['not_committed']}")
        results[size] = {"max": peak, "half": halfr,
                         "peak_rss_mb": {"gateway": round(gateway.peak_rss / 2**20, 1),
                                         "worker": round(worker.peak_rss / 2**20, 1)}}
    return results


async def phase_backlog(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    say(f"backlog: {cfg.backlog:,} small callbacks queued, one worker drains them")
    r = await drain(services, out, "backlog", bodies.variants("small", "json"), cfg.backlog, "application/json")
    return r


# Budgets so large they never apply: the worker as it was before it had them.
UNBOUNDED: dict[str, Any] = {"worker_max_held_bytes": 2**62, "worker_max_held_rows": 2**62}


async def phase_memory(services: Services, cfg: Config, bodies: Bodies, out: Path) -> dict[str, Any]:
    """A flood of the densest maximum-size callbacks, then ordinary drains; each with the default
    byte and row budgets and without them (interleaved, same run)."""
    from runtime.settings import Settings

    limit = Settings().max_body_bytes
    dense = [payloads.densest(seed, limit) for seed in range(TEMPLATES)]
    rendered = [payloads.to_json(d) for d in dense]
    say(f"memory: flood of {cfg.memory_flood} x {len(rendered[0]):,} B ({payloads.rows_of(dense[0]):,} rows each)")

    def flood() -> Iterator[tuple[bytes, int]]:
        for i in itertools.count():
            k = i % TEMPLATES
            yield payloads.variant(rendered[k], dense[k], i), payloads.rows_of(dense[k])

    results: dict[str, Any] = {"body_bytes": len(rendered[0]), "rows_per_body": payloads.rows_of(dense[0])}
    variants: tuple[tuple[str, dict[str, Any]], ...] = (("bounded", {}), ("unbounded", UNBOUNDED))
    for label, settings in variants:
        results[f"flood_{label}"] = await drain(services, out, f"memory-flood-{label}", flood(), cfg.memory_flood,
                                                "application/json", **settings)
    for size in ("typical", "small"):
        runs: dict[str, list[float]] = {"bounded": [], "unbounded": []}
        for _ in range(cfg.repeats):
            for label, settings in variants:
                r = await drain(services, out, f"memory-{size}-{label}", bodies.variants(size, "json"),
                                cfg.worker_n[size], "application/json", **settings)
                runs[label].append(r["payloads_per_s"])
        mean = {label: sum(v) / len(v) for label, v in runs.items()}
        results[f"{size}_payloads_per_s"] = runs
        results[f"{size}_ratio"] = round(mean["bounded"] / mean["unbounded"], 3)
        say(f"  {size}: bounded / unbounded = {results[f'{size}_ratio']}x ({runs})")
    peak = {label: max(results[f"flood_{label}"]["peak_rss_mb"].values()) for label in ("bounded", "unbounded")}
    say(f"  flood peak RSS: bounded {peak['bounded']} MB, unbounded {peak['unbounded']} MB")
    return results


PHASES = {"decode": phase_decode, "gateway": phase_gateway, "worker": phase_worker, "scaling": phase_scaling, "e2e": phase_e2e,
          "backlog": phase_backlog, "memory": phase_memory}
# Run only when named (--only memory): minutes of 16 MiB callbacks, not part of the full run's report.
OPT_IN = {"memory"}


# Steps run after the phases, on the same services and bodies, by name (bench/profile.py's run,
# bench/analytics.py's run): passed in by bench/__main__.py, only those asked for, so that this
# module never imports the modules that import it.
Extra = Callable[[Services, "Bodies", Path, bool], Awaitable[dict[str, Any]]]


async def main_async(args: argparse.Namespace, extras: Mapping[str, Extra] | None = None) -> int:
    cfg = QUICK if args.quick else FULL
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = OUT / f"{stamp}-{cfg.name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bodies").mkdir()
    say(f"run {out.name}: logs and raw results in {out}")
    results: dict[str, Any] = {"config": dataclasses.asdict(cfg), "machine": machine(),
                               "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    bodies = Bodies(out / "bodies")
    results["payloads"] = {size: {"json_bytes": bodies.mean_bytes(size, "json"), "xml_bytes": bodies.mean_bytes(size, "xml"),
                                  "rows": sum(map(payloads.rows_of, bodies.data[size])) // TEMPLATES}
                           for size in payloads.SIZES}
    services = Services()
    await services.open()
    results["machine"]["postgresql"] = await postgres_version(services.database_url)
    say(f"database and vhost {services.name} created")
    started = time.monotonic()
    try:
        for name, phase in PHASES.items():
            if (args.only and name not in args.only) or (name in OPT_IN and not args.only):
                continue
            t = time.monotonic()
            try:
                results[name] = await phase(services, cfg, bodies, out)
            except Exception as e:  # noqa: BLE001 - report what failed, go on with the rest
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            results.setdefault("phase_seconds", {})[name] = round(time.monotonic() - t, 1)
            (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        for name, extra in (extras or {}).items():
            t = time.monotonic()
            try:
                results[name] = await extra(services, bodies, out, args.quick)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            results.setdefault("phase_seconds", {})[name] = round(time.monotonic() - t, 1)
    finally:
        await services.close()
        say(f"database and vhost {services.name} dropped")
    results["seconds"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    from bench import report

    # Only a complete full run replaces the committed RESULTS.md / results.png.
    target = HERE if not (args.only or args.quick) else out
    report.write(results, target)
    say(f"done in {results['seconds']:.0f}s: {target / 'RESULTS.md'}, {target / 'results.png'}")
    return 0

