"""``python -m bench.prune_under_load``: does ``flowscribe-ingest prune`` hold up a worker?

Focused scenario (~3-5 min): an archive of ``--archive`` callbacks received 200
days ago (100,000 by default, each with the body of a real small callback),
then one worker process (the product, as ``make bench`` runs it) drains
``--drain`` typical JSON callbacks while ``flowscribe-ingest prune --older-than
90d`` removes the archive's bodies, switched on and off in turns of
``--window`` seconds (SIGCONT / SIGSTOP). The figure is the worker's throughput
in the windows with the prune on against those with it off: paired, seconds
apart, so the load of a shared machine favours neither side (two separate
drains differed by 1.6x here with nothing changed). Once per ``--duty-cycles``
value, the archive refilled each time. The aim: at least 0.8x.

Lock waits: a sampler reads ``pg_stat_activity`` of the run's database every
10 ms during the drain and records every backend seen waiting on a lock
(``wait_event_type = 'Lock'``): how long (from its first to its last sample),
on what, whether it was the worker or the prune, and whether the prune was on.
It also times the prune's statements as the server runs them (the client's
own timing would count the time it was stopped). The aim: no worker waits
longer than one prune batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import payloads
from bench.harness import CommitWatcher, prefill, say
from bench.services import Proc, Services, python_argv

OUT = Path(__file__).resolve().parent / "out"
TEMPLATES = 4


def typical_bodies() -> Any:
    data = [payloads.build("typical", seed) for seed in range(TEMPLATES)]
    rendered = [payloads.to_json(d) for d in data]
    n = 0
    while True:
        k = n % TEMPLATES
        yield payloads.variant(rendered[k], data[k], n), payloads.rows_of(data[k])
        n += 1


async def fill_archive(services: Services, n: int) -> dict[str, Any]:
    """``n`` ledger rows received 200 days ago, each with a distinct real small callback body."""
    template = payloads.to_json(payloads.build("small", 99)).decode()
    analysis_id = json.loads(template)["ConversationAnalysisModel"]["ID"]
    conn = await asyncpg.connect(services.database_url)
    try:
        started = time.monotonic()
        # A refill replaces the pruned archive rather than adding to it.
        await conn.execute("DELETE FROM flowscribe.callbacks WHERE received_at < now() - interval '90 days'")
        await conn.execute("VACUUM flowscribe.callbacks")
        for first in range(0, n, 10_000):
            await conn.execute(
                """
                INSERT INTO flowscribe.callbacks (id, received_at, content_type, body_sha256, body, outcome)
                SELECT gen_random_uuid(), now() - interval '200 days' + i * interval '1 second',
                       'application/json', md5(i::text), convert_to(replace($1, $2, md5(i::text)::uuid::text), 'UTF8'),
                       'ingested'
                FROM generate_series($3::int, $4::int) AS i
                """,
                template, analysis_id, first + 1, min(n, first + 10_000),
            )
        await conn.execute("ANALYZE flowscribe.callbacks")
        stored = await conn.fetchval("SELECT sum(pg_column_size(body)) FROM flowscribe.callbacks"
                                     " WHERE received_at < now() - interval '90 days'")
        return {"callbacks": n, "body_bytes": len(template), "stored_bytes": stored,
                "seconds": round(time.monotonic() - started, 1)}
    finally:
        await conn.close()


async def sample_lock_waits(database_url: str, name: str, stop: asyncio.Event) -> list[dict[str, Any]]:
    """Every lock wait seen in the database ``name`` until ``stop``: who, on what, how long."""
    conn = await asyncpg.connect(database_url)
    waits: dict[tuple[int, Any], dict[str, Any]] = {}
    batches: dict[Any, list[float]] = {}  # the prune's statements as the server runs them: first, last seen
    samples = 0
    try:
        while not stop.is_set():
            now = time.time()
            for r in await conn.fetch(
                "SELECT pid, query_start, wait_event_type, wait_event, position('SKIP LOCKED' in query) > 0 AS prune"
                " FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()", name,
            ):
                prune = r["prune"]
                if prune:
                    batches.setdefault(r["query_start"], [now, now])[1] = now
                if r["wait_event_type"] == "Lock":
                    seen = waits.setdefault((r["pid"], r["query_start"]), {
                        "first": now, "event": r["wait_event"], "who": "prune" if prune else "worker"})
                    seen["last"] = now
            samples += 1
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return [{"who": w["who"], "event": w["event"], "at": w["first"], "ms": round((w["last"] - w["first"]) * 1000, 1)}
            for w in waits.values()] + [{"samples": samples, "prune_statements_ms": [
                round((last - first) * 1000, 1) for first, last in batches.values()]}]


def _under_way(prune: Proc) -> None:
    while prune.alive() and b"pruning:" not in prune.log_path.read_bytes():
        time.sleep(0.05)


def _toggle(prune: Proc, worker: Proc, watcher: CommitWatcher, n: int, window: float) -> list[tuple[float, float, bool]]:
    """Until ``n`` are committed: the prune on for ``window`` seconds, off for as long, and so on.

    Off is SIGSTOP (the prune's client stops; its statement in flight, if any, finishes in the
    server), on is SIGCONT. Returns the windows as (start, end, prune on) in epoch seconds.
    """
    windows = []
    on = False
    while watcher.poll() < n:
        if not worker.alive():
            raise RuntimeError("the worker exited during the drain")
        if prune.alive():
            os.kill(prune.pid, signal.SIGCONT if on else signal.SIGSTOP)
        start = time.time()
        deadline = start + window
        while time.time() < deadline and watcher.poll() < n:
            time.sleep(0.02)
        windows.append((start, time.time(), on))
        on = not on
    if prune.alive():
        os.kill(prune.pid, signal.SIGCONT)
    return windows


async def drain_with_prune(services: Services, out: Path, name: str, bodies: Any, n: int, duty_cycle: float,
                           window: float, lock_waits: list[dict[str, Any]]) -> dict[str, Any]:
    """One worker drains ``n`` typical callbacks while a prune is switched on and off in turns."""
    conn = await asyncpg.connect(services.database_url)
    try:  # the callbacks of earlier drains go; the archive stays
        await conn.execute("DELETE FROM flowscribe.callbacks WHERE received_at > now() - interval '1 day'")
        for table in ("jobs", "analyses", "sentences", "sentence_entities", "sentence_intents",
                      "sentence_keywords", "sentence_scorings", "sentence_topics"):
            await conn.execute(f"TRUNCATE flowscribe.{table}")
    finally:
        await conn.close()
    await services.purge()
    await prefill(services, bodies, n, "application/json", concurrency=50)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lock_waits(services.database_url, services.name, stop))
    prune = Proc(f"{name}-prune", python_argv("flowscribe_ingest.cli", "prune", "--older-than", "90d", "--json",
                                              "--duty-cycle", str(duty_cycle)), services.env(), out)
    await asyncio.to_thread(_under_way, prune)
    os.kill(prune.pid, signal.SIGSTOP)
    worker = Proc(f"{name}-worker", python_argv("bench.launch", "worker"), services.env(), out)
    try:
        watcher = CommitWatcher([worker])
        worker.wait_for_event("consuming", 60)
        windows = await asyncio.to_thread(_toggle, prune, worker, watcher, n, window)
    finally:
        worker.stop()
        if prune.alive():
            os.kill(prune.pid, signal.SIGCONT)
    await asyncio.to_thread(prune.wait, 900)
    stop.set()
    seen = await sampler
    for wait in seen:
        if "at" in wait:
            wait["prune_on"] = any(start <= wait["at"] < end and on for start, end, on in windows)
    lock_waits.extend(seen)
    summary = next(json.loads(line) for line in reversed(prune.log_path.read_text().splitlines())
                   if line.startswith('{"mode"'))
    pruned_until = prune.log_path.stat().st_mtime
    # Whole windows only (the last one is cut short by the end of the drain), and "on" windows
    # only while the prune still had bodies to remove.
    rates: dict[bool, list[float]] = {True: [], False: []}
    counted: dict[bool, list[float]] = {True: [0.0, 0.0], False: [0.0, 0.0]}  # callbacks, seconds
    # The first window is the worker's warm-up (its first batches, cold caches): not counted.
    for start, end, on in windows[1:-1]:
        if on and end > pruned_until:
            continue
        committed = watcher.committed_between(start, end)
        rates[on].append(round(committed / (end - start), 1))
        counted[on][0] += committed
        counted[on][1] += end - start
    watcher.close()
    if not rates[True] or not rates[False]:
        raise RuntimeError("too few windows: give it a larger --drain or --archive, or a shorter --window")
    with_prune, without = (counted[on][0] / counted[on][1] for on in (True, False))
    result = {
        "duty_cycle": duty_cycle, "callbacks": n, "window_seconds": window,
        "callbacks_per_s_with_prune": round(with_prune, 1), "callbacks_per_s_without": round(without, 1),
        "vs_without": round(with_prune / without, 3),
        "median_vs_without": round(statistics.median(rates[True]) / statistics.median(rates[False]), 3),
        "windows_with_prune": rates[True], "windows_without": rates[False],
        "prune": summary,
        # Server side: the client's own timing counts the time it was stopped.
        "prune_longest_statement_ms": max(seen[-1]["prune_statements_ms"], default=0.0),
    }
    say(f"  {name}: {result['vs_without']}x (median of windows {result['median_vs_without']}x) ({result['callbacks_per_s_with_prune']}/s with the prune on,"
        f" {result['callbacks_per_s_without']}/s off; windows on {rates[True]}, off {rates[False]})")
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services = Services()
    await services.open()
    out = Path(tempfile.mkdtemp(prefix="prune-", dir=OUT))
    try:
        bodies = typical_bodies()
        lock_waits: list[dict[str, Any]] = []
        during = []
        for duty in args.duty_cycles:
            say(f"filling an archive of {args.archive} callbacks ...")
            archive = await fill_archive(services, args.archive)
            say(f"  {archive}")
            during.append(await drain_with_prune(services, out, f"duty-{duty}", bodies, args.drain, duty,
                                                 args.window, lock_waits))
    finally:
        await services.close()
    waits = [w for w in lock_waits if "who" in w]
    return {
        "archive": archive, "during": during,
        "lock_waits": {
            "samples": sum(w.get("samples", 0) for w in lock_waits),
            "seen": len(waits),
            "longest_ms": max((w["ms"] for w in waits), default=0.0),
            "worker_longest_ms": max((w["ms"] for w in waits if w["who"] == "worker"), default=0.0),
            "with_prune_on": sum(1 for w in waits if w.get("prune_on")),
            "with_prune_off": sum(1 for w in waits if not w.get("prune_on")),
            "detail": waits[:20],
        },
        "out": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=int, default=100_000, help="archived callbacks to prune")
    parser.add_argument("--drain", type=int, default=3000, help="typical callbacks per drain")
    parser.add_argument("--window", type=float, default=4.0, help="seconds the prune is on, then off, in turns")
    parser.add_argument("--duty-cycles", type=float, nargs="+", default=[1.0, 0.25],
                        help="run the prune at these --duty-cycle values (default: flat out, and the default)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    results = asyncio.run(run(args))
    path = Path(results["out"]) / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    for d in results["during"]:
        say(f"duty cycle {d['duty_cycle']}: worker {d['vs_without']}x of its throughput without a prune"
            f" ({d['callbacks_per_s_with_prune']}/s vs {d['callbacks_per_s_without']}/s);"
            f" median of windows {d['median_vs_without']}x; longest prune statement {d['prune_longest_statement_ms']} ms")
    w = results["lock_waits"]
    say(f"lock waits seen: {w['seen']} ({w['with_prune_on']} with the prune on, {w['with_prune_off']} off),"
        f" longest {w['longest_ms']} ms (worker: {w['worker_longest_ms']} ms); {path}")


if __name__ == "__main__":
    main()
