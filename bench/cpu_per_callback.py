"""Machine CPU per callback, end to end, this tree against another one, in turns (~4 min).

    python -m bench.cpu_per_callback --baseline-tree DIR [--rounds 2] [--seconds 10]

A gateway and a worker (the product's CLI, default settings) take callbacks offered at a
fixed rate (bench.httpload's open loop, every callback a new analysis) for ``--seconds``;
what each part of the machine spent meanwhile, divided by the callbacks committed:

- gateway, worker: their own CPU (exact, from the kernel);
- PostgreSQL: the backends serving the worker's connections only (matched by client port),
  so other databases on the server, and the load generator's polling, are not counted;
- RabbitMQ: the node serving port 5672 (its beam.smp). It is the machine's broker, shared
  with whatever else uses it meanwhile: the noisiest column.

The baseline is another checkout of the product (``git worktree add`` or ``git archive``
of the release), run with the same services, bodies and rates; the two alternate, fresh
processes each time, ``--rounds`` times per size, so drift on a shared machine hits both.
Writes ``bench/out/<run>/cpu_per_callback.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import harness
from bench.services import ROOT, Proc, Services, free_port, python_argv, wait_http_ready

RATES = {"small": 150.0, "typical": 25.0}  # well under what one worker lands here: a steady state


def _cpu(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system


def _broker() -> psutil.Process | None:
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "beam.smp":
            with contextlib.suppress(psutil.Error):
                if any(c.laddr.port == 5672 and c.status == psutil.CONN_LISTEN for c in p.net_connections("tcp")):
                    return p
    return None


async def _backends(database_url: str, name: str, client: Proc) -> dict[int, psutil.Process]:
    """PostgreSQL backends whose client is ``client`` (by the client's local ports)."""
    ports = set()
    with contextlib.suppress(psutil.Error):
        ports = {c.laddr.port for c in client.ps.net_connections("tcp") if c.raddr and c.raddr.port == 5432}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()
    out = {}
    for r in rows:
        if r["client_port"] in ports:
            with contextlib.suppress(psutil.Error):
                out[r["pid"]] = psutil.Process(r["pid"])
    return out


class _Tree:
    """A checkout of the product whose processes the bench starts (cwd and PYTHONPATH)."""

    def __init__(self, label: str, root: Path) -> None:
        self.label, self.root = label, root

    def proc(self, services: Services, out: Path, name: str, argv: list[str], **settings: Any) -> Proc:
        env = services.env(**settings) | {"PYTHONPATH": str(self.root)}
        return Proc(name, argv, env, out, cwd=self.root)


async def _one(services: Services, bodies: harness.Bodies, out: Path, tree: _Tree, size: str, seconds: float,
               tag: str) -> dict[str, Any]:
    await services.reset()
    port = free_port()
    gateway = tree.proc(services, out, f"cpu-{tag}-gateway", python_argv("bench.launch", "gateway"), gateway_port=port)
    worker = tree.proc(services, out, f"cpu-{tag}-worker", python_argv("bench.launch", "worker"))
    try:
        wait_http_ready(port)
        worker.wait_for_event("consuming")
        templates = out / f"cpu-templates-{size}.json"
        templates.write_text(json.dumps([[str(bodies.file(size, "json", i)), *bodies.ids(size, i)]
                                         for i in range(harness.TEMPLATES)]))
        broker = _broker()
        pg = await _backends(services.database_url, services.name, worker)
        before = {"gateway": gateway.cpu_seconds(), "worker": worker.cpu_seconds(),
                  "broker": _cpu(broker) if broker else 0.0}
        pg_before = {pid: _cpu(p) for pid, p in pg.items()}
        argv = python_argv("bench.httpload", "open", f"http://127.0.0.1:{port}{harness.CALLBACK}{services.token}",
                           str(templates), "application/json", "--rate", str(RATES[size]),
                           "--duration", str(seconds), "--database-url", services.database_url)
        gen = Proc(f"cpu-{tag}-load", argv, os.environ | {"PYTHONPATH": str(ROOT)}, out)
        gen.wait(seconds + 120)
        # Backends opened meanwhile (the pool grows on demand) count whole: all their work is in the window.
        pg.update(await _backends(services.database_url, services.name, worker))
        used = {"gateway": gateway.cpu_seconds() - before["gateway"],
                "worker": worker.cpu_seconds() - before["worker"],
                "postgres": sum(_cpu(p) - pg_before.get(pid, 0.0) for pid, p in pg.items() if p.is_running()),
                "broker": (_cpu(broker) - before["broker"]) if broker else 0.0}
    finally:
        gateway.stop()
        worker.stop()
    lines = [line for line in gen.log_path.read_text().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    committed = result["accepted"] - result["not_committed"]
    per = {k: round(1000 * v / committed, 3) for k, v in used.items()}
    per["total"] = round(sum(per.values()), 3)
    harness.say(f"  {tree.label} {size}: {committed} committed; ms CPU per callback {per}")
    return {"committed": committed, "cpu_ms_per_callback": per, "load": result}


async def run(baseline: Path, rounds: int, seconds: float, sizes: list[str]) -> dict[str, Any]:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = harness.OUT / f"{stamp}-cpu"
    (out / "bodies").mkdir(parents=True)
    bodies = harness.Bodies(out / "bodies")
    trees = [_Tree("baseline", baseline), _Tree("this tree", ROOT)]
    services = Services()
    await services.open()
    results: dict[str, Any] = {"baseline_tree": str(baseline), "rounds": rounds, "seconds": seconds, "sizes": {}}
    try:
        for size in sizes:
            runs: dict[str, list[dict[str, Any]]] = {t.label: [] for t in trees}
            for i in range(rounds):
                for tree in trees if i % 2 == 0 else reversed(trees):
                    runs[tree.label].append(await _one(services, bodies, out, tree, size, seconds,
                                                       f"{size}-{i}-{tree.label.replace(' ', '-')}"))
            results["sizes"][size] = runs
    finally:
        await services.close()
    (out / "cpu_per_callback.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    parts = ("gateway", "worker", "postgres", "broker", "total")
    lines = ["| size | tree | " + " | ".join(parts) + " |", "|---|---|" + "---:|" * len(parts)]
    for size, runs in results["sizes"].items():
        means = {label: {p: statistics.mean(r["cpu_ms_per_callback"][p] for r in rs) for p in parts}
                 for label, rs in runs.items()}
        for label, m in means.items():
            lines.append(f"| {size} | {label} | " + " | ".join(f"{m[p]:.3f}" for p in parts) + " |")
        base, new = means["baseline"], means["this tree"]
        lines.append(f"| {size} | **ratio** | " + " | ".join(
            f"**{new[p] / base[p]:.2f}×**" if base[p] else "–" for p in parts) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_callback", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, required=True, help="a checkout of the release to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--sizes", nargs="+", default=list(RATES), choices=list(RATES))
    args = parser.parse_args()
    asyncio.run(run(args.baseline_tree.resolve(), args.rounds, args.seconds, args.sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
