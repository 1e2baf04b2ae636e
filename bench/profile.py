"""Where the time goes: ``python -m bench --profile`` (or ``--only profile``).

1. Stages, in process: what each step of the worker costs per batch of 100 typical
   callbacks (decode, checks, COPY records, the store's transaction, one log line),
   against the raw COPY of the same rows.
2. Sampling profiles of the real processes (py-spy, non-blocking, CPU samples only):
   a worker draining typical payloads, the gateway under small-body load. Samples
   are put in buckets by the first frame (from the leaf up) that belongs to a known
   part; top functions by self and inclusive time are listed too.
3. Prototypes of proposals, measured against the product in the same phase: bench-only
   changes applied at import time (bench/launch.py) or settings, never product edits.

Writes PROFILE.md (and the raw py-spy stacks) into the run's folder, and into bench/
for a full run.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import logging
import os
import shutil
import signal
import statistics
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.services import Proc, Services

# (bucket, files): the first rule that matches a frame's file, from the leaf up, names the
# sample's bucket; frames matching none (stdlib, asyncio) are skipped on the way up. A key
# ending in "/" is a directory; otherwise a file name (py-spy shortens some paths to it).
WORKER_RULES = [
    ("logging (per-message and per-batch lines)", ("logging/", "logs.py")),
    ("metrics", ("prometheus_client/", "metrics.py")),
    ("decode: msgspec/lxml + storable checks (schemas/decoding/)", ("decoding/",)),
    ("COPY records: child_rows, analysis_row (store/rows.py)", ("rows.py",)),
    ("asyncpg: encode records, protocol (+ store/timestamps.py)", ("asyncpg/", "timestamps.py")),
    ("store: locks, reads, decide, record lists (store/)", ("store/",)),
    ("aio-pika/aiormq: deliveries, acks", ("aio_pika/", "aiormq/", "pamqp/")),
    ("worker: sha256, headers, batching (worker/, schemas/message.py)", ("worker/", "message.py", "hashlib.py")),
]
GATEWAY_RULES = [
    ("logging: access log + 'callback accepted'", ("logging/", "logs.py", "server.py", "redaction.py")),
    ("metrics", ("prometheus_client/", "metrics.py")),
    ("aio-pika/aiormq/pamqp: publish, confirms", ("aio_pika/", "aiormq/", "pamqp/")),
    ("publish_callback: id, sha256, Message (publisher.py)", ("publisher.py",)),
    ("handler: checks, body, budget", ("app.py", "body.py", "limits.py", "sources.py", "signatures.py")),
    ("aiohttp: parse, respond, middlewares", ("aiohttp/", "multidict/", "yarl/")),
]


def _matches(file: str, key: str) -> bool:
    if key.endswith("/"):
        return ("/" + key) in ("/" + file)
    return file == key or file.endswith("/" + key)


def _frames(line: str) -> tuple[list[tuple[str, str]], int]:
    stack, _, count = line.rpartition(" ")
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        frames.append((name, where.rstrip(")").rsplit(":", 1)[0]))
    return frames, int(count)


def summarize(raw: Path, rules: list[tuple[str, tuple[str, ...]]], top: int = 15) -> dict[str, Any]:
    buckets: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        total += count
        self_time["{} ({})".format(*frames[-1])] += count
        for f in {"{} ({})".format(*f) for f in frames}:
            inclusive[f] += count
        for _, file in reversed(frames):
            bucket = next((name for name, keys in rules if any(_matches(file, k) for k in keys)), None)
            if bucket:
                buckets[bucket] += count
                break
        else:
            buckets["event loop, stdlib, other"] += count

    def pct(c: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(n)]

    noise = ("<module>", "runners.py", "base_events.py", "events.py", "runpy", "launch.py", "cli.py")
    return {
        "samples": total,
        "buckets": pct(buckets, 20),
        "self": pct(self_time, top),
        "inclusive": [(k, v) for k, v in pct(inclusive, top + 25) if not any(n in k for n in noise)][:top],
    }


def pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when it is not on PATH
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    """py-spy record of one process until stopped (SIGINT makes py-spy write its file)."""

    def __init__(self, target: Proc, out: Path, name: str, rate: int = 200) -> None:
        exe = pyspy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
        self.path = out / f"{name}.pyspy.txt"
        self.proc = Proc(f"{name}-py-spy", [exe, "record", "--pid", str(target.pid), "--rate", str(rate),
                                            "--nonblocking", "--format", "raw", "-o", str(self.path)],
                         os.environ.copy(), out)

    def stop(self) -> Path:
        os.kill(self.proc.pid, signal.SIGINT)
        self.proc.wait(60)
        return self.path


# --- 1. stages -------------------------------------------------------------------------


async def stages(services: Services, bodies: Any) -> dict[str, Any]:
    from bench import copy_ceiling
    from runtime.logs import JsonFormatter
    from schemas import topology
    from schemas.decoding import decode_payload
    from schemas.message import to_callback
    from store.batch import write_batch
    from store.rows import CHILD_COLUMNS, analysis_row, child_rows

    n = 100
    variants = bodies.variants("typical", "json", start=5 * 10**6)
    sample = [next(variants)[0] for _ in range(n)]
    xml_sample = [b for b, _ in (next(bodies.variants("typical", "xml", start=6 * 10**6)) for _ in range(20))]

    def messages(batch: list[bytes], content_type: str = "application/json") -> list[Any]:
        now = datetime.datetime.now(datetime.UTC)
        return [types.SimpleNamespace(
            message_id=str(uuid.uuid4()), body=b, content_type=content_type, timestamp=now,
            headers={topology.HEADER_RECEIVED_AT: now.isoformat(), topology.HEADER_BODY_SHA256: hashlib.sha256(b).hexdigest()})
            for b in batch]

    def timed(fn: Any, items: list[Any]) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for x in items:
                fn(x)
            best = min(best, time.perf_counter() - t)
        return best

    out: dict[str, float] = {}
    out["sha256 of the body"] = timed(hashlib.sha256, sample) * 1000
    out["decode_payload (JSON)"] = timed(lambda b: decode_payload(b, "application/json"), sample) * 1000
    out["decode_payload (XML, per 100)"] = timed(lambda b: decode_payload(b, "application/xml"), xml_sample) * 1000 * n / len(xml_sample)
    out["to_callback (headers + sha256 + decode)"] = timed(to_callback, messages(sample)) * 1000
    callbacks = [to_callback(m) for m in messages(sample)]

    def rows(cb: Any) -> None:
        analysis_row(cb)
        for _, (attribute, _) in CHILD_COLUMNS.items():
            child_rows(cb.analysis, attribute)

    out["COPY records (analysis_row + child_rows)"] = timed(rows, callbacks) * 1000
    formatter = JsonFormatter("worker")
    record = logging.LogRecord("worker", logging.INFO, __file__, 1, "callback stored", None, None)
    record.__dict__.update({"message_id": str(uuid.uuid4()), "analysis_id": str(uuid.uuid4()), "outcome": "ingested"})
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    out["log 'callback stored' lines (format + write)"] = timed(handler.emit, [record] * n) * 1000

    conn = await asyncpg.connect(services.database_url)
    try:
        writes = []
        for _ in range(3):
            batch = [to_callback(m) for m in messages([next(variants)[0] for _ in range(n)])]
            t = time.perf_counter()
            await write_batch(conn, batch)
            writes.append(time.perf_counter() - t)
        out["write_batch (one transaction: locks, reads, COPY, commit)"] = statistics.median(writes) * 1000
    finally:
        await conn.close()
    ceiling = await copy_ceiling.run(services.database_url, [(next(variants)[0], "application/json") for _ in range(3 * n)], n)
    out["raw COPY of the same rows (the ceiling), per batch"] = ceiling["seconds"] / 3 * 1000
    as_str = await copy_ceiling.run(services.database_url, [(next(variants)[0], "application/json") for _ in range(3 * n)],
                                    n, uuid_as_str=True)
    out["raw COPY, UUIDs passed to asyncpg as str, per batch"] = as_str["seconds"] / 3 * 1000
    return {k: round(v, 2) for k, v in out.items()}


# --- 2 + 3. profiles and prototypes -------------------------------------------------------


async def worker_profile(services: Services, bodies: Any, out: Path, n: int) -> dict[str, Any]:
    from bench.harness import CommitWatcher, event_time, prefill
    from bench.services import python_argv

    await services.reset()
    rows = await prefill(services, bodies.variants("typical", "json"), n, "application/json")
    worker = Proc("profile-worker", python_argv("bench.launch", "worker"), services.env(), out)
    try:
        worker.wait_for_event("consuming", 60)
        recording = Recording(worker, out, "worker")
        watcher = CommitWatcher([worker])
        finished = watcher.wait(n, 600, [worker])
        raw = recording.stop()
        watcher.close()
        seconds = finished - event_time(worker, "consuming")
    finally:
        worker.stop()
    return {"payloads": n, "rows": rows, "rows_per_s": round(rows / seconds), "profile": summarize(raw, WORKER_RULES),
            "raw": raw.name}


async def gateway_profile(services: Services, bodies: Any, out: Path, seconds: float) -> dict[str, Any]:
    from bench.harness import CALLBACK, load, start_gateway

    gateway, port = start_gateway(services, out, "profile-gateway")
    url = f"http://127.0.0.1:{port}{CALLBACK}{services.token}"
    try:
        load(out, "profile-warmup", url, bodies.file("small"), "application/json", 64, 2, gateway)
        recording = Recording(gateway, out, "gateway")
        r = load(out, "profile-wrk", url, bodies.file("small"), "application/json", 64, seconds, gateway)
        raw = recording.stop()
    finally:
        gateway.stop()
    await services.purge()
    return {"rate": r["rate"], "profile": summarize(raw, GATEWAY_RULES), "raw": raw.name}


WORKER_VARIANTS: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
    ("product as is", (), {}),
    ("no per-message info line ('callback stored')", ("--no-per-message-logs",), {}),
    ("batch 200 (prefetch 600)", (), {"worker_batch_size": 200}),
    ("batch 50 (prefetch 150)", (), {"worker_batch_size": 50}),
    ("product as is (again: drift check)", (), {}),
]
# Small payloads: per-message costs (acks, log lines, deliveries) weigh more than the database.
SMALL_WORKER_VARIANTS = [v for v in WORKER_VARIANTS if not v[0].startswith("batch")]
GATEWAY_VARIANTS: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
    ("product as is", (), {}),
    ("no per-request info lines (access log, 'callback accepted')", ("--no-per-message-logs",), {}),
    ("product as is (again: drift check)", (), {}),
    ("no per-request info lines (again)", ("--no-per-message-logs",), {}),
]


async def prototypes(services: Services, bodies: Any, out: Path, n: int, seconds: float) -> dict[str, Any]:
    from bench.harness import CALLBACK, drain, load, say, start_gateway

    worker: dict[str, list[dict[str, Any]]] = {}
    for size, count, variants in (("typical", n, WORKER_VARIANTS), ("small", 10 * n, SMALL_WORKER_VARIANTS)):
        worker[size] = []
        for i, (label, flags, settings) in enumerate(variants):
            r = await drain(services, out, f"proto-worker-{size}-{i}", bodies.variants(size, "json"), count,
                            "application/json", flags=flags, **settings)
            worker[size].append({"variant": label, "payloads_per_s": r["payloads_per_s"], "rows_per_s": r["rows_per_s"],
                                 "cpu_percent": r["cpu_percent"].get("worker0"),
                                 "postgres_cpu_percent": r["cpu_percent"].get("postgres"), "verified": r["verified"]})
    gateway: list[dict[str, Any]] = []
    for i, (label, flags, settings) in enumerate(GATEWAY_VARIANTS):
        proc, port = start_gateway(services, out, f"proto-gateway-{i}", *flags, **settings)
        url = f"http://127.0.0.1:{port}{CALLBACK}{services.token}"
        try:
            load(out, f"proto-warmup-{i}", url, bodies.file("small"), "application/json", 64, 2, proc)
            r = load(out, f"proto-wrk-{i}", url, bodies.file("small"), "application/json", 64, seconds, proc)
        finally:
            proc.stop()
        await services.purge()
        say(f"  gateway {label}: {r['rate']:,.0f}/s")
        gateway.append({"variant": label, "rate": r["rate"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                        "cpu_percent": r["cpu_percent"].get("server")})
    return {"worker": worker, "gateway": gateway}


async def plan_cache(services: Services, bodies: Any, out: Path, n: int) -> list[dict[str, Any]]:
    """A backlog drained into emptied tables: the product, and each plan_cache_mode (see launch._plan_cache_mode)."""
    from bench.harness import drain

    runs: list[dict[str, Any]] = []
    for label, flags in (("product as is", ()),
                         ("plan_cache_mode=auto (PostgreSQL's default)", ("--plan-cache-mode", "auto")),
                         ("plan_cache_mode=force_custom_plan", ("--plan-cache-mode", "force_custom_plan"))):
        r = await drain(services, out, f"proto-plans-{len(runs)}", bodies.variants("small", "json"), n,
                        "application/json", flags=flags)
        runs.append({"variant": label, "payloads": n, "payloads_per_s": r["payloads_per_s"], "batch_ms": r["batch_ms"],
                     "postgres_cpu_percent": r["cpu_percent"].get("postgres")})
    return runs


async def large_in_hand(services: Services, bodies: Any, out: Path, n: int) -> list[dict[str, Any]]:
    """Worker memory with a full prefetch of large (2 MB) callbacks: default prefetch, then a small one."""
    from bench.harness import drain

    runs: list[dict[str, Any]] = []
    variants: list[tuple[str, dict[str, Any]]] = [
        ("default prefetch (3 x batch = 300)", {}), ("prefetch 20", {"worker_prefetch": 20})]
    for label, settings in variants:
        r = await drain(services, out, f"proto-large-{len(runs)}", bodies.variants("large", "json"), n,
                        "application/json", **settings)
        runs.append({"variant": label, "payloads": n, "payloads_per_s": r["payloads_per_s"], "rows_per_s": r["rows_per_s"],
                     "peak_rss_mb": max(r["peak_rss_mb"].values())})
    return runs


async def run(services: Services, bodies: Any, out: Path, quick: bool = False) -> dict[str, Any]:
    import traceback

    from bench.harness import say

    steps = [
        ("stages_ms_per_100_typical", "stage costs in process", lambda: stages(services, bodies)),
        ("worker", "py-spy on a worker draining typical payloads",
         lambda: worker_profile(services, bodies, out, 150 if quick else 500)),
        ("gateway", "py-spy on the gateway under small-body load",
         lambda: gateway_profile(services, bodies, out, 4 if quick else 10)),
        ("prototypes", "prototypes of proposals",
         lambda: prototypes(services, bodies, out, 120 if quick else 400, 4 if quick else 8)),
        ("plan_cache", "backlog into empty tables, generic vs custom plans",
         lambda: plan_cache(services, bodies, out, 3000 if quick else 20000)),
        ("large_in_hand", "worker memory with a full prefetch of large callbacks",
         lambda: large_in_hand(services, bodies, out, 40 if quick else 240)),
    ]
    result: dict[str, Any] = {}
    for key, what, step in steps:
        say(f"profile: {what}")
        try:
            result[key] = await step()
        except Exception as e:  # noqa: BLE001 - keep what the other steps found
            traceback.print_exc()
            result[key] = {"error": f"{type(e).__name__}: {e}"}
    text = markdown(result)
    (out / "PROFILE.md").write_text(text)
    if not quick:
        (Path(__file__).parent / "PROFILE.md").write_text(text)
    return result


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Where the time goes", "",
             "Written by `python -m bench --profile` (bench/profile.py). Percentages are of CPU samples of the",
             "process's Python threads (py-spy, 200 Hz, non-blocking); waiting on sockets is not sampled.", "",
             "## Worker: stage costs per batch of 100 typical callbacks (in process, best of 3)", "",
             "| stage | ms per 100 |", "|---|---:|"]
    for k, v in r["stages_ms_per_100_typical"].items():
        lines.append(f"| {k} | {v:,.1f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for name in ("worker", "gateway"):
        p = r[name]
        if "error" in p:
            lines += ["", f"## {name}: failed: `{p['error']}`"]
            continue
        head = (f"## Worker draining {p['payloads']} typical callbacks ({p['rows_per_s']:,} rows/s while sampled)"
                if name == "worker" else f"## Gateway under small-body load ({p['rate']:,.0f} callbacks/s while sampled)")
        lines += ["", head, "", f"{p['profile']['samples']:,} samples; raw stacks: `{p['raw']}`.", "",
                  "| bucket | % of CPU samples |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in p["profile"]["buckets"]]
        lines += ["", "| top functions by self time | % |", "|---|---:|"]
        lines += [f"| `{k}` | {v} |" for k, v in p["profile"]["self"]]
        lines += ["", "| top functions by inclusive time | % |", "|---|---:|"]
        lines += [f"| `{k}` | {v} |" for k, v in p["profile"]["inclusive"]]
    plans = r.get("plan_cache")
    if isinstance(plans, list):
        lines += ["", f"## Plan cache: {plans[0]['payloads']:,} small callbacks drained into emptied tables", "",
                  "| variant | payloads/s | batch ms, first tenth → last tenth | PostgreSQL CPU |", "|---|---:|---:|---:|"]
        for x in plans:
            b = x["batch_ms"] or {}
            lines.append(f"| {x['variant']} | {x['payloads_per_s']:,.0f} | {b.get('first_tenth', 0):.0f} → {b.get('last_tenth', 0):.0f} "
                         f"| {x['postgres_cpu_percent'] or 0:.0f}% |")
    large = r.get("large_in_hand")
    if isinstance(large, list):
        lines += ["", f"## Worker memory with large (2 MB) callbacks in hand ({large[0]['payloads']} queued)", "",
                  "| variant | payloads/s | rows/s | peak RSS |", "|---|---:|---:|---:|"]
        for x in large:
            lines.append(f"| {x['variant']} | {x['payloads_per_s']:,.1f} | {x['rows_per_s']:,} | {x['peak_rss_mb']:.0f} MB |")
    proto = r["prototypes"]
    if "error" in proto:
        return "\n".join([*lines, "", f"Prototypes failed: `{proto['error']}`"]) + "\n"
    lines += ["", "## Prototypes (bench-only; the product is unchanged)", ""]
    for size, runs in proto["worker"].items():
        base_w = runs[0]["rows_per_s"]
        lines += [f"Worker draining {size} JSON (bench/launch.py flags or settings):", "",
                  "| variant | payloads/s | rows/s | vs product | worker CPU | PostgreSQL CPU |",
                  "|---|---:|---:|---:|---:|---:|"]
        for w in runs:
            lines.append(f"| {w['variant']} | {w['payloads_per_s']:,.1f} | {w['rows_per_s']:,} "
                         f"| {w['rows_per_s'] / base_w:.2f}× | {w['cpu_percent'] or 0:.0f}% "
                         f"| {w['postgres_cpu_percent'] or 0:.0f}% |")
        lines.append("")
    base_g = proto["gateway"][0]["rate"]
    lines += ["", "Gateway, small bodies, 64 connections:", "",
              "| variant | callbacks/s | p50 / p99 ms | vs product | gateway CPU |", "|---|---:|---:|---:|---:|"]
    for g in proto["gateway"]:
        lines.append(f"| {g['variant']} | {g['rate']:,.0f} | {g['p50_ms']:.0f} / {g['p99_ms']:.0f} | {g['rate'] / base_g:.2f}× "
                     f"| {g['cpu_percent'] or 0:.0f}% |")
    return "\n".join(lines) + "\n"
