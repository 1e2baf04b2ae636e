"""RESULTS.md and results.png from one run's results (bench/out/<run>/results.json).

    python -m bench.report bench/out/<run>/results.json [TARGET_DIR]   # re-render a run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# What runs before the restructure into layers hashed (they did not record it).
_EARLIER_PRODUCT_DIRS = ("gateway", "worker", "schemas", "flowscribe_ingest")


def _dirs(machine: dict[str, Any]) -> str:
    return ", ".join(d + "/" for d in machine.get("product_dirs", _EARLIER_PRODUCT_DIRS))

SIZES = ("small", "typical", "large")
RSS_LIMIT_MB = 300


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _reps(x: dict[str, Any]) -> str:
    """A rate, with each repeat's value when there were several."""
    reps = x.get("repeats") or []
    return _n(x["rate"]) + (f" <sub>({' / '.join(_n(v) for v in reps)})</sub>" if len(reps) > 1 else "")


def _kb(n: int) -> str:
    return f"{n / 1000:,.0f} kB" if n < 1_000_000 else f"{n / 1e6:,.1f} MB"


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, evidence, met) for every target of issues #6 and #21."""
    out: list[tuple[str, str, bool | None]] = []
    gw = r.get("gateway", {})
    for gateway, ceiling, setup in _gateway_setups(gw):
        for size in SIZES:
            g = gw.get(size)
            if not g or gateway not in g:
                continue
            ratio = _ratio(g[gateway]["rate"], g[ceiling]["rate"])
            out.append((f"Gateway ≥ 0.9× broker ceiling ({size}; {setup})",
                        f"{_n(g[gateway]['rate'])}/s vs {_n(g[ceiling]['rate'])}/s = **{ratio:.2f}×**",
                        ratio >= 0.9))
        if gateway in gw.get("small", {}):
            rate = gw["small"][gateway]["rate"]
            out.append((f"Gateway ≥ 1,500 callbacks/s (small; {setup})", f"**{_n(rate)}/s**", rate >= 1500))
    small = gw.get("small", {})
    if "gateway" in small and "broker_ceiling" in small:  # issue #21's aim for one process
        ratio = small["gateway"]["rate"] / small["broker_ceiling"]["rate"]
        out.append(("Gateway ≥ 0.6× broker ceiling (small; 1 process; #21)", f"**{ratio:.2f}×**", ratio >= 0.6))
    dec = r.get("decode")
    if dec and "xml_over_json" in dec:
        x = dec["xml_over_json"]
        out.append(("XML decode ≤ 1.5× JSON decode (typical, same payloads)",
                    f"{min(dec['xml_ms_per_100']):,.0f} vs {min(dec['json_ms_per_100']):,.0f} ms per 100 = **{x:.2f}×**",
                    x <= 1.5))
    wx = r.get("worker", {}).get("typical-xml")
    wk = r.get("worker", {}).get("typical-json")
    if wk and wx:
        x, j = wx["worker"]["payloads_per_s"], wk["worker"]["payloads_per_s"]
        out.append(("Worker typical XML ≥ 0.7× worker typical JSON, payloads/s",
                    f"{_n(x, 1)} vs {_n(j, 1)}/s = **{x / j:.2f}×**", x / j >= 0.7))
    if wk:
        w, c, nv = wk["worker"]["rows_per_s"], wk["copy_ceiling"]["rows_per_s"], wk["naive"]["rows_per_s"]
        out.append(("Worker ≥ 0.8× raw COPY ceiling, rows/s (typical)",
                    f"{_n(w)} vs {_n(c)} rows/s = **{w / c:.2f}×**", w / c >= 0.8))
        out.append(("Worker ≥ 15× naive baseline, rows/s (typical)",
                    f"{_n(w)} vs {_n(nv)} rows/s = **{w / nv:.1f}×**", w / nv >= 15))
    bl = r.get("backlog")
    if bl and "peak_rss_mb" in bl:
        peak = max(bl["peak_rss_mb"].values())
        out.append((f"Worker RSS < {RSS_LIMIT_MB} MB draining {bl['payloads']:,} queued callbacks",
                    f"peak **{peak:.0f} MB**", peak < RSS_LIMIT_MB))
    for size, e in r.get("e2e", {}).items():
        if "half" not in e:
            continue
        h = e["half"]
        ok = h["lag_ms"]["p99"] < 1000 and h["not_committed"] == 0 and not h["errors"]
        out.append((f"End-to-end p99 < 1 s at half load ({size})",
                    f"p99 **{_n(h['lag_ms']['p99'])} ms** at {_n(h['rate'])}/s"
                    + (f"; {h['not_committed']} not committed" if h["not_committed"] else ""), ok))
    return out


def _gateway_setups(gw: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(gateway key, its broker ceiling's key, description) for each gateway configuration measured."""
    setups = [("gateway", "broker_ceiling", "1 process")]
    if gw.get("processes"):
        setups.append(("gateway_processes", "broker_ceiling_processes", f"{gw['processes']} processes"))
    return setups


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    cfg = r["config"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` ({cfg['name']} run, {r.get('seconds', 0) / 60:.1f} min) on {r['started']}.",
        "Every figure sits next to a ceiling or baseline measured **in the same run on the same machine**;",
        "the machine is small (everything — load generator, gateway, workers, RabbitMQ, PostgreSQL — on",
        "one box) and shared, so compare the **ratios**, not absolute numbers across runs",
        "(repeats vary by about ±20%). Raw figures: `results.json`; logs of every process: `bench/out/`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB |",
        f"| load average at start | {', '.join(map(str, m['load_average_at_start']))} (other work shares the machine) |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']}; event loop: {m.get('event_loop', 'asyncio')} |",
        f"| libraries | {', '.join(f'{k} {v}' for k, v in m['libraries'].items())} |",
        f"| services | PostgreSQL {m.get('postgresql', '?')}, RabbitMQ {m.get('rabbitmq', '?')} (quorum queue) |",
        f"| load generator | {m.get('wrk', 'python aiohttp')} |",
        f"| code | {m.get('commit', '?')}; product code digest `{m.get('product_digest', '?')}` (sha256 of {_dirs(m)}) |",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, evidence, ok in targets(r):
        lines.append(f"| {name} | {evidence} | {'met' if ok else '**not met**'} |")

    if "payloads" in r:
        lines += ["", "## Payloads", "",
                  "Generated by `bench/payloads.py` (fixed seeds, distinct IDs per item); rows = items + analysis + job + ledger.",
                  "", "| size | JSON | XML | rows per callback |", "|---|---:|---:|---:|"]
        for size, p in r["payloads"].items():
            lines.append(f"| {size} | {_kb(p['json_bytes'])} | {_kb(p['xml_bytes'])} | {p['rows']:,} |")

    gw = r.get("gateway", {})
    if any(s in gw for s in SIZES):
        lines += [
            "", "## Gateway: callbacks accepted per second", "",
            f"Closed loop (wrk), {cfg['gateway_seconds']:g} s per figure after {cfg['warmup_seconds']:g} s warm-up, JSON bodies;",
            f"{cfg.get('repeats', 1)} interleaved repeat(s) of every figure, averaged (each repeat in small print).",
            "**HTTP ceiling**: the same app, middlewares, checks and logging with the publish replaced by a no-op (one process).",
            "**Broker ceiling**: the same messages published straight to the quorum queue with aio-pika",
            "(persistent, mandatory, confirms), as many in flight as the gateway has connections, from as many",
            "processes as the gateway runs (each its own connection, the in-flight count split among them).",
            "The gateway is measured as one process and as one per core (`FLOWSCRIBE_GATEWAY_PROCESSES`,",
            "SO_REUSEPORT). CPU is % of one core (the gateway's: all its processes); *loadgen* is the load generator's.",
            "",
            "*Both in one process* is derived, not measured: 1 ÷ (1/HTTP ceiling + 1/broker ceiling), the rate",
            "of one process that pays for the HTTP side and the publish side one after the other with nothing",
            "else added; what the gateway loses beyond it is its own overhead. It applies where both ceilings are",
            "bound by their own process's CPU (small bodies); with larger bodies RabbitMQ itself is the limit",
            "(its CPU is in the *broker CPU* column, >100% = more than one core).",
            "",
            "| size | gateway | conns | gateway /s | p50 / p99 ms | broker ceiling /s | p50 / p99 ms | **gateway ÷ broker** | HTTP ceiling /s | gateway ÷ HTTP | both in one process /s | gateway ÷ both | gateway CPU | broker CPU | loadgen CPU (gateway / HTTP ceiling run) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for gateway, ceiling, setup in _gateway_setups(gw):
            for size in SIZES:
                g = gw.get(size)
                if not g or gateway not in g:
                    continue
                a, b, h = g[gateway], g[ceiling], g["http_ceiling"]
                errs = f" ({a['errors']} errors)" if a["errors"] else ""
                serial = 1 / (1 / h["rate"] + 1 / b["rate"])
                lines.append(
                    f"| {size} | {setup} | {a['connections']} | {_reps(a)}{errs} | {a['p50_ms']:.0f} / {a['p99_ms']:.0f} "
                    f"| {_reps(b)} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} | **{a['rate'] / b['rate']:.2f}×** "
                    f"| {_reps(h)} | {a['rate'] / h['rate']:.2f}× | {_n(serial)} | {a['rate'] / serial:.2f}× "
                    f"| {a['cpu_percent']['server']:.0f}% "
                    f"| {a['cpu_percent']['broker']:.0f}% | {a['cpu_percent']['loadgen']:.0f}% / {h['cpu_percent']['loadgen']:.0f}% |")
        sized = [s for s in SIZES if s in gw]
        on_gateway = max(gw[s]["gateway"]["cpu_percent"]["loadgen"] for s in sized)
        headroom = min(gw[s]["http_ceiling"]["rate"] / gw[s]["gateway"]["rate"] for s in sized)
        busiest = max(sized, key=lambda s: gw[s]["http_ceiling"]["cpu_percent"]["loadgen"])
        on_ceiling = gw[busiest]["http_ceiling"]["cpu_percent"]["loadgen"]
        lines += ["", f"The load generator is not what limits the gateway: in the gateway runs it uses at most "
                  f"{on_gateway:.0f}% of a core, and the same generator drives the no-op app (HTTP ceiling) at least "
                  f"{headroom:.1f}× faster than the gateway at every size."
                  + (f" In the HTTP-ceiling run with {busiest} bodies it uses {on_ceiling:.0f}% of a core (one wrk "
                     "thread writing several GB/s), so that ceiling is a lower bound." if on_ceiling >= 50 else "")]

    wk = r.get("worker", {})
    if wk and not wk.get("error"):
        lines += [
            "", "## Worker: draining a pre-filled queue (one process, default settings)", "",
            "Time from the worker's start of consuming to its last commit; every run is checked",
            "(all callbacks `ingested`, row counts exact). **Raw COPY ceiling**: the same rows, already",
            "decoded, COPYed in one transaction per 100 callbacks and nothing else. **Naive baseline**:",
            "stdlib `json`, one INSERT per row, one transaction per callback, ack after each commit.",
            "",
            "| payload | body | worker payloads/s | worker rows/s | COPY ceiling rows/s | **worker ÷ ceiling** | naive rows/s | **worker ÷ naive** | worker CPU | peak RSS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, w in wk.items():
            if "worker" not in w:
                continue
            ww, c = w["worker"], w["copy_ceiling"]
            nv = w.get("naive")
            vs_naive = f"**{ww['rows_per_s'] / nv['rows_per_s']:.1f}×**" if nv else "–"
            lines.append(
                f"| {key} | {_kb(w['bytes'])} | {_n(ww['payloads_per_s'], 1)} | {_n(ww['rows_per_s'])} "
                f"| {_n(c['rows_per_s'])} | **{ww['rows_per_s'] / c['rows_per_s']:.2f}×** "
                f"| {_n(nv['rows_per_s']) if nv else '–'} | {vs_naive} "
                f"| {ww['cpu_percent'].get('worker0', 0):.0f}% | {max(ww['peak_rss_mb'].values()):.0f} MB |")

    sc = r.get("scaling")
    if sc and "one" in sc:
        lines += ["", "## Scaling: worker processes on one backlog (typical JSON)", "",
                  "| workers | payloads/s | rows/s | speedup | machine busy |", "|---:|---:|---:|---:|---:|"]
        for n, key in ((1, "one"), (2, "two")):
            s = sc[key]
            lines.append(f"| {n} | {_n(s['payloads_per_s'], 1)} | {_n(s['rows_per_s'])} "
                         f"| {s['rows_per_s'] / sc['one']['rows_per_s']:.2f}× | {s['machine_busy_percent']:.0f}% |")

    e2e = r.get("e2e", {})
    if e2e and not e2e.get("error"):
        lines += [
            "", "## End to end: gateway + one worker on one box", "",
            "**Sustained maximum**: the gateway driven flat out (closed loop, every body a new analysis) while",
            "the worker lands what it can; the rate committed end to end meanwhile (after a 1 s lead-in) is what",
            "the pair sustains — whatever the gateway accepts beyond it only grows the queue. It is a lower bound:",
            "a gateway not driven flat out leaves the worker more CPU. Then, on fresh processes and an empty",
            "queue, an open-loop load at **half** of it; lag = from the gateway's 202 to the callback's rows being",
            "committed and visible (client clock, polled every 20 ms); server lag = `processed_at − received_at`",
            "(gateway receipt to the start of the committing transaction).",
            "",
            "| size | gateway accepted /s (flat out) | sustained end to end /s | offered (half) /s | lag p50 / p99 ms | server lag p50 / p99 ms | gateway latency p50 / p99 ms | not committed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for size, e in e2e.items():
            if "half" not in e:
                continue
            mx, h = e["max"], e["half"]
            lines.append(
                f"| {size} | {_n(mx['accepted_rate'])} | {_n(mx['sustained_rate'])} | {_n(h['rate'])} "
                f"| {h['lag_ms']['p50']:.0f} / **{h['lag_ms']['p99']:.0f}** | {h['server_lag_ms']['p50']:.0f} / {h['server_lag_ms']['p99']:.0f} "
                f"| {h['gateway_latency_ms']['p50']:.0f} / {h['gateway_latency_ms']['p99']:.0f} | {h['not_committed']} |")

    lines += ["", "## Memory: peak RSS (kernel high-water mark)", "", "| process | run | peak RSS |", "|---|---|---:|"]
    if gw.get("gateway_peak_rss_mb"):
        lines.append(f"| gateway | all gateway runs (up to 2 MB bodies × {cfg['concurrency']['large']} connections) | {gw['gateway_peak_rss_mb']:.0f} MB |")
    if gw.get("gateway_processes_peak_rss_mb"):
        lines.append(f"| gateway, {gw['processes']} processes (sum of each one's peak) | all gateway runs | {gw['gateway_processes_peak_rss_mb']:.0f} MB |")
    for size, e in e2e.items():
        if isinstance(e, dict) and "peak_rss_mb" in e:
            lines.append(f"| gateway | end to end, {size} | {e['peak_rss_mb']['gateway']:.0f} MB |")
            lines.append(f"| worker | end to end, {size} | {e['peak_rss_mb']['worker']:.0f} MB |")
    for key, w in wk.items():
        if isinstance(w, dict) and "worker" in w:
            lines.append(f"| worker | drain {w['worker']['payloads']:,} × {key} | {max(w['worker']['peak_rss_mb'].values()):.0f} MB |")
    bl = r.get("backlog")
    if bl and "peak_rss_mb" in bl:
        lines.append(f"| worker | **drain a backlog of {bl['payloads']:,} small** ({_n(bl['payloads_per_s'])} payloads/s) "
                     f"| **{max(bl['peak_rss_mb'].values()):.0f} MB** |")
        lines += ["", "The worker holds at most prefetch (default 3 × batch = 300) messages, so its memory follows",
                  "prefetch × body size, not the backlog: compare the backlog drain with the short small-payload drain above."]
        b = bl.get("batch_ms") or {}
        if b:
            grew = b["last_tenth"] > 1.5 * b["first_tenth"]
            lines += ["", f"Mean time per committed batch over this drain: **{b['first_tenth']:.0f} ms** (first tenth of "
                      f"{b['batches']:,} batches) → **{b['last_tenth']:.0f} ms** (last tenth), while `flowscribe.callbacks` "
                      "grew from empty" + (": it degrades with the table's size. Look-ups planned while a table was "
                      "empty keep a seq scan, and with autovacuum off on this server (see Machine) nothing re-plans "
                      "them; see PROFILE.md, *Plan cache*." if grew else
                      ": throughput does not depend on how much is stored (look-ups use their indexes).")]

    errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["", "## Phases that failed", ""] + [f"- {k}: `{v}`" for k, v in errors.items()]
    lines += ["", "## Reproduce", "", "```sh", "make bench                        # full run, ~10 min; rewrites this file and results.png",
              "make bench BENCH_ARGS=--quick     # 1-2 min smoke run (its report goes to bench/out/<run>/ only)", "```", ""]
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle(f"flowscribe-ingest benchmark ({r['config']['name']} run, {r['started']}, "
                 f"{r['machine']['cores']} cores) — each figure beside its ceiling from the same run", fontsize=12)
    gw = r.get("gateway", {})
    sizes = [s for s in SIZES if s in gw]

    def bars(ax: Any, groups: list[str], series: dict[str, list[float]], title: str, ylabel: str, log: bool = False) -> None:
        width = 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            b = ax.bar(xs, values, width, label=label)
            ax.bar_label(b, labels=[_n(v) for v in values], fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.legend(fontsize=8)

    if sizes:
        bars(axes[0][0], sizes, {
            "HTTP ceiling (publish no-op)": [gw[s]["http_ceiling"]["rate"] for s in sizes],
            "broker ceiling (aio-pika, confirms)": [gw[s]["broker_ceiling"]["rate"] for s in sizes],
            "gateway": [gw[s]["gateway"]["rate"] for s in sizes],
            **({f"broker ceiling, {gw['processes']} publishers": [gw[s]["broker_ceiling_processes"]["rate"] for s in sizes],
                f"gateway, {gw['processes']} processes": [gw[s]["gateway_processes"]["rate"] for s in sizes]}
               if gw.get("processes") else {}),
        }, "Gateway throughput", "callbacks/s (log)", log=True)
        bars(axes[0][1], sizes, {
            "gateway p50": [gw[s]["gateway"]["p50_ms"] for s in sizes],
            "gateway p99": [gw[s]["gateway"]["p99_ms"] for s in sizes],
            "broker ceiling p50": [gw[s]["broker_ceiling"]["p50_ms"] for s in sizes],
            "broker ceiling p99": [gw[s]["broker_ceiling"]["p99_ms"] for s in sizes],
        }, "Gateway latency (closed loop)", "ms")
    wk = {k: v for k, v in r.get("worker", {}).items() if isinstance(v, dict) and "worker" in v}
    if wk:
        keys = list(wk)
        bars(axes[0][2], keys, {
            "naive baseline": [wk[k]["naive"]["rows_per_s"] if "naive" in wk[k] else 0 for k in keys],
            "worker": [wk[k]["worker"]["rows_per_s"] for k in keys],
            "raw COPY ceiling": [wk[k]["copy_ceiling"]["rows_per_s"] for k in keys],
        }, "Worker throughput", "rows/s")
    e2e = {k: v for k, v in r.get("e2e", {}).items() if isinstance(v, dict) and "half" in v}
    if e2e:
        keys = list(e2e)
        bars(axes[1][0], [f"{k}\n@{e2e[k]['half']['rate']:.0f}/s" for k in keys], {
            "lag p50": [e2e[k]["half"]["lag_ms"]["p50"] for k in keys],
            "lag p99": [e2e[k]["half"]["lag_ms"]["p99"] for k in keys],
        }, "End to end at half the sustained max: 202 → rows committed", "ms")
        axes[1][0].axhline(1000, color="red", linestyle="--", linewidth=1)
    sc = r.get("scaling")
    if sc and "one" in sc:
        bars(axes[1][1], ["1 worker", "2 workers"], {"rows/s": [sc["one"]["rows_per_s"], sc["two"]["rows_per_s"]]},
             "Scaling (typical JSON, one 2-core box)", "rows/s")
    rss: dict[str, float] = {}
    if gw.get("gateway_peak_rss_mb"):
        rss["gateway"] = gw["gateway_peak_rss_mb"]
    if gw.get("gateway_processes_peak_rss_mb"):
        rss[f"gateway\n{gw['processes']} processes"] = gw["gateway_processes_peak_rss_mb"]
    for k, w in wk.items():
        rss[f"worker\n{k}"] = max(w["worker"]["peak_rss_mb"].values())
    bl = r.get("backlog")
    if bl and "peak_rss_mb" in bl:
        rss[f"worker\nbacklog {bl['payloads'] // 1000}k"] = max(bl["peak_rss_mb"].values())
    if rss:
        ax = axes[1][2]
        b = ax.bar(range(len(rss)), list(rss.values()), color="tab:gray")
        ax.bar_label(b, labels=[f"{v:.0f}" for v in rss.values()], fontsize=8)
        ax.set_xticks(range(len(rss)), list(rss), fontsize=7)
        ax.axhline(RSS_LIMIT_MB, color="red", linestyle="--", linewidth=1, label=f"{RSS_LIMIT_MB} MB target")
        ax.set_title("Peak RSS", fontsize=10)
        ax.set_ylabel("MB")
        ax.legend(fontsize=8)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict[str, Any], target: Path) -> None:
    (target / "RESULTS.md").write_text(markdown(results))
    (target / "results.json").write_text(json.dumps(results, indent=1, default=str))
    chart(results, target / "results.png")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    write(json.loads(source.read_text()), Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent)
