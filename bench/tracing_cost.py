"""``python -m bench.tracing_cost [--baseline DIR]``: what OpenTelemetry traces cost per callback, end to end.

Focused, not part of ``make bench`` (~3 min with the defaults): a gateway and a worker run
as in production (``bench.launch``), with tracing off (no ``OTEL_*`` variable: today's
product), on at 100% and on at 1% (``parentbased_traceidratio``), exporting over OTLP/HTTP
to a sink process on this machine that answers every export at once. Each round posts
COUNT new callbacks (16 connections, closed loop) and waits for the last to be in the
ledger; the three modes take turns, round after round, so that they share the machine's
noise; with ``--baseline DIR`` the product as it was before tracing (a tree exported from
git: ``git archive main | tar -x -C DIR``) takes its turn too, and is the reference ("vs").
Reported: CPU of the gateway and the worker per callback (the cost tracing adds
is the difference), callbacks/s end to end, and what the sink received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from bench import payloads
from bench.services import ROOT, Proc, Services, free_port, python_argv, wait_http_ready

BASELINE = "before tracing"
MODES: dict[str, dict[str, str]] = {
    BASELINE: {},  # with --baseline DIR only: the product as it was (e.g. `git archive main`), tracing unknown
    "off": {},
    "on, 100%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"},
    "on, 1%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}


def sink(port: int) -> None:
    """An OTLP/HTTP receiver that keeps nothing: counts exports and their bytes (printed at SIGTERM)."""
    received = {"exports": 0, "bytes": 0}

    async def export(request: web.Request) -> web.Response:
        received["exports"] += 1
        received["bytes"] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/counts", counts)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def _post_all(url: str, bodies: list[bytes], connections: int) -> None:
    queue = iter(bodies)
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for body in queue:
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    if r.status != 202:
                        raise RuntimeError(f"{r.status}: {await r.text()}")

        await asyncio.gather(*(client() for _ in range(connections)))


async def _stored(database_url: str, count: int, timeout: float = 300) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM flowscribe.callbacks") < count:
            if time.monotonic() > deadline:
                raise TimeoutError("callbacks not all stored")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _sink_counts(port: int) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/counts") as r:
        return dict(await r.json())


async def round_of(
    services: Services, out: Path, mode: str, bodies: list[bytes], sink_port: int, baseline: Path | None,
) -> dict[str, Any]:
    await services.reset()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}", **MODES[mode]} if MODES[mode] else {}
    port = free_port()
    tag = mode.replace(", ", "-").replace("%", "pc").replace(" ", "-")
    if mode == BASELINE:
        assert baseline is not None
        # -P: the baseline's tree first on the path, not this one (the working directory).
        otel = {"PYTHONPATH": str(baseline)}
        argv = [sys.executable, "-P", "-m", "bench.launch"]
    else:
        argv = python_argv("bench.launch")
    gateway = Proc(f"gateway-{tag}", [*argv, "gateway"], {**services.env(gateway_port=port), **otel}, out)
    worker = Proc(f"worker-{tag}", [*argv, "worker"], {**services.env(), **otel}, out)
    try:
        wait_http_ready(port)
        worker.wait_for_event("consuming")
        before = await _sink_counts(sink_port)
        cpu0 = {"gateway": gateway.cpu_seconds(), "worker": worker.cpu_seconds()}
        started = time.monotonic()
        await _post_all(f"http://127.0.0.1:{port}/flowscribe/callback/{services.token}", bodies, 16)
        await _stored(services.database_url, len(bodies))
        elapsed = time.monotonic() - started
        cpu = {"gateway": gateway.cpu_seconds() - cpu0["gateway"], "worker": worker.cpu_seconds() - cpu0["worker"]}
    finally:
        gateway.stop()
        worker.stop()
    await asyncio.sleep(0.5)  # the last exports, sent at stop
    after = await _sink_counts(sink_port)
    n = len(bodies)
    return {
        "mode": mode, "callbacks": n, "seconds": round(elapsed, 2), "per_second": round(n / elapsed, 1),
        "gateway_cpu_ms": round(1000 * cpu["gateway"] / n, 3), "worker_cpu_ms": round(1000 * cpu["worker"] / n, 3),
        "exported_kb_per_callback": round((after["bytes"] - before["bytes"]) / n / 1024, 2),
    }


def _table(rounds: list[dict[str, Any]], pick: Any) -> str:
    """One row per mode: ``pick`` (statistics.median, or min: the least disturbed round) of its rounds."""
    lines = ["| mode | callbacks/s | gateway CPU ms / callback | worker CPU ms / callback | both | vs the first |"
             " exported KiB / callback |", "|---|---:|---:|---:|---:|---:|---:|"]
    chosen = {}
    for mode in dict.fromkeys(r["mode"] for r in rounds):
        mine = [r for r in rounds if r["mode"] == mode]
        for r in mine:
            r["both_cpu_ms"] = r["gateway_cpu_ms"] + r["worker_cpu_ms"]
        best = pick(r["both_cpu_ms"] for r in mine)
        chosen[mode] = {k: pick(r[k] for r in mine) for k in ("per_second", "gateway_cpu_ms", "worker_cpu_ms",
                                                               "exported_kb_per_callback")} | {"both": best}
    base = chosen[next(iter(chosen))]["both"]
    for mode, m in chosen.items():
        lines.append(f"| {mode} | {m['per_second']:,.0f} | {m['gateway_cpu_ms']:.3f} | {m['worker_cpu_ms']:.3f} |"
                     f" {m['both']:.3f} | {m['both'] / base:.2f}× ({m['both'] - base:+.3f} ms) |"
                     f" {m['exported_kb_per_callback']:.2f} |")
    return "\n".join(lines)


def hooks_while_off(repeat: int = 200_000) -> float:
    """ns per callback of every tracing hook the gateway and the worker run while tracing is off."""
    from runtime import tracing
    from runtime.trace_names import sampled_trace_id

    assert tracing.active() is None
    headers: dict[str, Any] = {"x-flowscribe-received-at": "2026-01-01T00:00:00.000000+00:00"}
    message = object()
    worker_tracing = None
    started = time.perf_counter_ns()
    for _ in range(repeat):
        tracing.event("authenticated")
        tracing.event("body read")
        with tracing.publishing(message, "publish", destination="x"):
            pass
        time.time_ns()  # the worker's decode start
        if worker_tracing is not None:
            raise AssertionError
        sampled_trace_id(headers)
        time.time_ns()  # the commit
        if worker_tracing is not None:
            raise AssertionError
    return (time.perf_counter_ns() - started) / repeat


async def run(args: argparse.Namespace) -> None:
    out = ROOT / "bench" / "out" / f"tracing-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    payload = payloads.build(args.size, 1)
    template = payloads.render(payload, "json")
    sink_port = free_port()
    sink_proc = Proc("otlp-sink", [sys.executable, "-m", "bench.tracing_cost", "--sink", str(sink_port)],
                     {"PYTHONPATH": str(ROOT)}, out)
    services = Services()
    await services.open()
    rounds: list[dict[str, Any]] = []
    try:
        wait_http_ready(sink_port, "/counts")
        modes = [mode for mode in MODES if mode != BASELINE or args.baseline is not None]
        for r in range(args.rounds):
            # Each round starts with the next mode: no mode always runs first (or after the same one).
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                bodies = [payloads.variant(template, payload, r * 1_000_000 + i) for i in range(args.count)]
                result = await round_of(services, out, mode, bodies, sink_port, args.baseline)
                rounds.append(result)
                print(json.dumps(result), flush=True)
    finally:
        sink_proc.stop()
        await services.close()
    (out / "results.json").write_text(json.dumps(rounds, indent=2))
    print(f"\n{args.size} callbacks ({len(template):,} bytes), {args.count} per round, {args.rounds} rounds."
          f"\n\nMedians:\n\n{_table(rounds, statistics.median)}"
          f"\n\nThe least of each (the least disturbed round):\n\n{_table(rounds, min)}"
          f"\n\nEvery tracing hook of one callback while tracing is off: {hooks_while_off():.0f} ns"
          f"\n\nraw: {out}/results.json")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=list(payloads.SIZES))
    parser.add_argument("--count", type=int, default=1000, help="callbacks per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs every mode once)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the product from DIR (a tree without tracing: `git archive main | tar -x -C DIR`)")
    parser.add_argument("--sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink(args.sink)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
