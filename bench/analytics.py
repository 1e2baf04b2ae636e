"""``python -m bench --only analytics``: what the analytics views cost and what they save.

1. The worker's cost of writing the summaries: drains of the same backlog by the product's
   worker, with the summaries and without (``bench.launch --no-summaries``), interleaved, so
   drift hits both alike; of small callbacks (a few sentences: the summaries' share is the
   largest) and of typical ones, each drain large enough that a cost growing with the tables
   shows (its batches' time in the first and the last tenth of the drain).
2. SQL or Python: ``flowscribe.summarise()`` (what the worker runs) against the prototype in
   ``bench/summary_python.py``, on the same batches of 100 decoded typical callbacks.
3. A history of HISTORY_N typical conversations over HISTORY_DAYS days and HISTORY_AGENTS
   agents, written through the worker's store path (``write_batch``); on it, a 30-day agent
   scorecard and a 30-day topic trend from the views against the same figures computed
   directly from the sentence-level tables (checked equal), and a sample of every view.

Not part of the full run (it adds minutes); its report is ``ANALYTICS.md`` in the run's folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import os
import random
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from bench import payloads, summary_python
from bench.harness import drain, say
from schemas.decoding import decode_payload
from schemas.message import Callback
from store.batch import write_batch
from store.connection import Connection

HISTORY_N = 20_000
HISTORY_DAYS = 90
HISTORY_AGENTS = 50
HISTORY_TEMPLATES = 32
HISTORY_END = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
WINDOW_DAYS = 30
COST_PAIRS = 3
COST_N = {"small": 20_000, "typical": 2_000}  # callbacks per drain
VIEWS = ("conversations", "agent_daily", "sentiment_daily", "topics_daily", "intents_daily", "keywords_daily",
         "entities_daily")


# --- 1. the worker with and without summaries --------------------------------------------------


async def worker_cost(services: Any, bodies: Any, out: Path, size: str, n: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"with": [], "without": []}
    batch_ms: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    for i in range(COST_PAIRS):
        for name, flags in (("with", ()), ("without", ("--no-summaries",))):
            r = await drain(services, out, f"analytics-{size}-{name}-{i}",
                            bodies.variants(size, "json", start=i * 10**7), n, "application/json", flags=flags)
            if not r["verified"]:
                raise RuntimeError(f"drain {size} {name} {i} did not land every callback")
            runs[name].append(r["payloads_per_s"])
            batch_ms[name].append(r["batch_ms"])
    with_, without = statistics.median(runs["with"]), statistics.median(runs["without"])
    pair_ratios = [round(w / wo, 3) for w, wo in zip(runs["with"], runs["without"], strict=True)]
    ratio = statistics.median(pair_ratios)
    return {"size": size, "payloads": n, "pairs": COST_PAIRS, "with_per_s": runs["with"],
            "without_per_s": runs["without"], "median_with": with_, "median_without": without,
            "pair_ratios": pair_ratios, "ratio": ratio, "cost_percent": round(100 * (1 - ratio), 1),
            "batch_ms": {name: {tenth: round(statistics.median(b[tenth] for b in batches), 1)
                                for tenth in ("first_tenth", "last_tenth") if all(tenth in b for b in batches)}
                         for name, batches in batch_ms.items()}}


# --- 2. the summaries in SQL or in Python ---------------------------------------------------------


def _callback(body: bytes, received_at: datetime.datetime) -> Callback:
    return Callback(uuid.uuid4(), received_at, "application/json", hashlib.sha256(body).hexdigest(), body,
                    decode_payload(body, "application/json"))


async def sql_or_python(conn: asyncpg.Connection, batches: Iterator[list[Callback]]) -> dict[str, Any]:
    """Rewrite the summaries of each stored batch both ways (rolled back), timed alternately."""
    from store.batch import write_summaries

    wall: dict[str, list[float]] = {"sql": [], "python": []}
    cpu: dict[str, list[float]] = {"sql": [], "python": []}
    database_cpu: dict[str, list[float]] = {"sql": [], "python": []}
    backend = conn.get_server_pid()
    sizes = []
    for batch in batches:
        sizes.append(len(batch))
        ids = [cb.analysis.ID for cb in batch if cb.analysis is not None]
        for way in ("sql", "python"):
            tr = conn.transaction()
            await tr.start()
            w, c, d = time.perf_counter(), time.process_time(), _backend_cpu_ms(backend)
            if way == "sql":
                await write_summaries(conn, ids)
            else:
                await summary_python.write_summaries(conn, batch, "UTC")
            wall[way].append((time.perf_counter() - w) * 1000)
            cpu[way].append((time.process_time() - c) * 1000)
            database_cpu[way].append(_backend_cpu_ms(backend) - d)
            await tr.rollback()
    return {
        "batches": len(sizes), "batch_size": max(sizes),
        **{f"{way}_ms_per_batch": round(statistics.median(wall[way]), 1) for way in wall},
        **{f"{way}_worker_cpu_ms_per_batch": round(statistics.fmean(cpu[way]), 1) for way in cpu},
        **{f"{way}_database_cpu_ms_per_batch": round(statistics.fmean(database_cpu[way]), 1) for way in cpu},
    }


# --- 3. a history, and the queries on it -----------------------------------------------------------


def history_bodies(n: int) -> Iterator[tuple[bytes, datetime.datetime]]:
    """``n`` typical callbacks (body, receive time): fresh ids, one of HISTORY_AGENTS agents, created
    over HISTORY_DAYS days. Made as they are consumed (all at once would be 5 GB); the same every time."""
    rng = random.Random(14)
    templates = [payloads.build("typical", seed) for seed in range(HISTORY_TEMPLATES)]
    rendered = [payloads.to_json(t) for t in templates]
    agents = [str(uuid.uuid5(uuid.NAMESPACE_OID, f"agent {a}")).encode() for a in range(HISTORY_AGENTS)]
    for i in range(n):
        k = rng.randrange(HISTORY_TEMPLATES)
        model = templates[k]["ConversationAnalysisModel"]
        their_agent = next(s["AgentID"] for s in model["ConversationSentenceScoring"] if s["AgentID"]).encode()
        created = HISTORY_END - datetime.timedelta(seconds=rng.randrange(HISTORY_DAYS * 86400))
        body = payloads.variant(rendered[k], templates[k], 10**7 + i)
        body = body.replace(their_agent, agents[rng.randrange(HISTORY_AGENTS)])
        body = body.replace(f'"DateCreated":"{model["DateCreated"]}"'.encode(),
                            f'"DateCreated":"{created.isoformat(timespec="microseconds")}"'.encode())
        yield body, created + datetime.timedelta(minutes=rng.randrange(5, 60))


def _backend_cpu_ms(pid: int) -> float:
    """CPU time (user + system) of a PostgreSQL backend on this machine, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def load_history(conn: asyncpg.Connection, n: int) -> dict[str, Any]:
    """Store ``n`` conversations in batches of 100 through ``write_batch``, as the worker does.

    Every other batch is written without its summaries, which are then written on their own,
    outside the measurement: per batch, the CPU time of this process (decode + write, as in
    the worker) and of its PostgreSQL backend, with the summaries and without. CPU time, not
    wall time, so that the other work on a shared machine does not blur the comparison.
    """
    import store.batch

    async def no_summaries(conn: Connection, analysis_ids: list[uuid.UUID]) -> dict[str, int]:
        return {}

    with_summaries = store.batch.write_summaries
    backend = conn.get_server_pid()
    cpu: dict[str, dict[str, list[float]]] = {w: {"worker": [], "database": []} for w in ("with", "without")}
    t = time.monotonic()
    written = 0
    history = history_bodies(n)
    for i in itertools.count():
        way = "with" if i % 2 == 0 else "without"
        worker_cpu, database_cpu = time.process_time(), _backend_cpu_ms(backend)
        batch = [_callback(b, r) for b, r in itertools.islice(history, 100)]
        if not batch:
            break
        store.batch.write_summaries = with_summaries if way == "with" else no_summaries
        try:
            await write_batch(conn, batch)
        finally:
            store.batch.write_summaries = with_summaries
        cpu[way]["worker"].append((time.process_time() - worker_cpu) * 1000)
        cpu[way]["database"].append(_backend_cpu_ms(backend) - database_cpu)
        if way == "without":
            async with conn.transaction():
                await with_summaries(conn, [cb.analysis.ID for cb in batch if cb.analysis is not None])
        written += len(batch)
        if written % 2000 == 0:
            say(f"  history: {written:,}/{n:,} stored ({written / (time.monotonic() - t):,.0f}/s)")
    seconds = time.monotonic() - t
    per_batch = {way: {side: round(statistics.fmean(v), 1) for side, v in sides.items()} for way, sides in cpu.items()}
    total = {way: sum(sides.values()) for way, sides in per_batch.items()}
    await conn.execute("VACUUM ANALYZE")  # what autovacuum does soon after a load
    sizes = {r["relname"]: r["size"] for r in await conn.fetch(
        "SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'flowscribe' AND c.relkind = 'r'")}
    return {"conversations": n, "seconds": round(seconds, 1), "per_s": round(n / seconds, 1),
            "cpu_ms_per_batch": per_batch, "cpu_ratio": round(total["with"] / total["without"], 3),
            "database_cpu_ratio": round(per_batch["with"]["database"] / per_batch["without"]["database"], 3),
            "rows": {t: await conn.fetchval(f"SELECT count(*) FROM flowscribe.{t}")
                     for t in ("analyses", "sentences", "sentence_scorings", "sentence_topics",
                               "conversation_summaries")},
            "table_mb": {k: round(v / 2**20, 1) for k, v in sorted(sizes.items())}}


_DAY = "(coalesce(a.date_created, a.received_at) AT TIME ZONE 'UTC')::date"
_FIGURES = list(summary_python.FIGURES)

@dataclasses.dataclass(frozen=True)
class Query:
    views: str  # on the analytics views
    direct: str  # the same figures from the sentence-level tables
    key: tuple[str, ...]  # what identifies a row of either


QUERIES = {
    "scorecard": Query(
        views="SELECT * FROM flowscribe_analytics.agent_daily WHERE day >= $1 AND day < $2",
        direct=f"""
            WITH conv AS (
                SELECT a.id, {_DAY} AS day FROM flowscribe.analyses AS a
                WHERE {_DAY} >= $1 AND {_DAY} < $2
            ), scores AS (
                SELECT c.analysis_id, mode() WITHIN GROUP (ORDER BY c.agent_id) AS agent_id,
                       {", ".join(f"avg(c.{f}) AS {f}" for f in _FIGURES)}
                FROM flowscribe.sentence_scorings AS c JOIN conv ON conv.id = c.analysis_id
                GROUP BY c.analysis_id
            ), talk AS (
                SELECT s.analysis_id, count(*) AS sentences,
                       count(*) FILTER (WHERE s.is_agent) AS agent_sentences,
                       count(*) FILTER (WHERE NOT s.is_agent) AS customer_sentences,
                       sum(length(s.sentence)) FILTER (WHERE s.is_agent)::double precision
                         / nullif(sum(length(s.sentence)) FILTER (WHERE s.is_agent IS NOT NULL), 0) AS agent_talk_share
                FROM flowscribe.sentences AS s JOIN conv ON conv.id = s.analysis_id
                GROUP BY s.analysis_id
            )
            SELECT scores.agent_id, conv.day, count(*) AS conversations, sum(talk.sentences) AS sentences,
                   sum(talk.agent_sentences) AS agent_sentences, sum(talk.customer_sentences) AS customer_sentences,
                   avg(talk.agent_talk_share) AS agent_talk_share,
                   {", ".join(f"avg(scores.{f}) AS {f}" for f in _FIGURES)}
            FROM conv JOIN scores ON scores.analysis_id = conv.id JOIN talk ON talk.analysis_id = conv.id
            GROUP BY scores.agent_id, conv.day""",
        key=("agent_id", "day"),
    ),
    "topic trend": Query(
        views="SELECT * FROM flowscribe_analytics.topics_daily WHERE day >= $1 AND day < $2",
        direct=f"""
            SELECT {_DAY} AS day, t.topic, count(*) AS mentions, count(DISTINCT t.analysis_id) AS conversations
            FROM flowscribe.analyses AS a JOIN flowscribe.sentence_topics AS t ON t.analysis_id = a.id
            WHERE {_DAY} >= $1 AND {_DAY} < $2 AND t.topic IS NOT NULL
            GROUP BY 1, 2""",
        key=("day", "topic"),
    ),
}


def _same(view_rows: list[asyncpg.Record], direct_rows: list[asyncpg.Record], key: tuple[str, ...]) -> bool:
    views = {tuple(r[k] for k in key): dict(r) for r in view_rows}
    direct = {tuple(r[k] for k in key): dict(r) for r in direct_rows}
    if views.keys() != direct.keys():
        return False
    for k, row in direct.items():
        for column, value in row.items():
            other = views[k][column]
            if isinstance(value, float) or isinstance(other, float):
                if abs(value - other) > 1e-9 * max(1.0, abs(value)):
                    return False
            elif value != other:
                return False
    return True


async def _timed(
    conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], repeats: int
) -> tuple[list[float], list[asyncpg.Record]]:
    rows = await conn.fetch(sql, *args)  # warm: the cache and the plan
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        rows = await conn.fetch(sql, *args)
        ms.append((time.perf_counter() - t) * 1000)
    return ms, rows


async def queries(conn: asyncpg.Connection) -> dict[str, Any]:
    end = HISTORY_END.date()
    args = (end - datetime.timedelta(days=WINDOW_DAYS), end)
    results = {}
    for name, q in QUERIES.items():
        view_ms, view_rows = await _timed(conn, q.views, args, 30)
        direct_ms, direct_rows = await _timed(conn, q.direct, args, 5)
        results[name] = {
            "rows": len(view_rows), "same_figures": _same(view_rows, direct_rows, q.key),
            "views_ms_median": round(statistics.median(view_ms), 2), "views_ms_max": round(max(view_ms), 2),
            "direct_ms_median": round(statistics.median(direct_ms), 1), "direct_ms_max": round(max(direct_ms), 1),
            "speedup": round(statistics.median(direct_ms) / statistics.median(view_ms), 1),
        }
        say(f"  {name}: views {results[name]['views_ms_median']} ms, sentence tables"
             f" {results[name]['direct_ms_median']} ms ({results[name]['speedup']}x), {len(view_rows)} rows,"
             f" same figures: {results[name]['same_figures']}")
    return results


SAMPLES = {
    "conversations": "SELECT analysis_id, day, agent_id, sentences, agent_sentences, customer_sentences,"
                     " round(agent_talk_share::numeric, 3) AS agent_talk_share, round(score_performance::numeric, 2)"
                     " AS score_performance, round(silence_percentage::numeric, 2) AS silence_percentage,"
                     " round(sentiment_score::numeric, 3) AS sentiment_score, topics, intents"
                     " FROM flowscribe_analytics.conversations ORDER BY date_created DESC LIMIT 3",
    "agent_daily": "SELECT agent_id, day, conversations, sentences,"
                   " round(agent_talk_share::numeric, 3) AS agent_talk_share,"
                   " round(score_performance::numeric, 2) AS score_performance, round(score_empathy::numeric, 2) AS"
                   " score_empathy, round(customer_satisfaction_percentage::numeric, 1)"
                   " AS customer_satisfaction_percentage,"
                   " round(silence_percentage::numeric, 1) AS silence_percentage, round(cross_talking::numeric, 3) AS"
                   " cross_talking FROM flowscribe_analytics.agent_daily WHERE day = $1 ORDER BY conversations DESC,"
                   " agent_id LIMIT 5",
    "sentiment_daily": "SELECT day, conversations, round(sentiment_score::numeric, 4) AS sentiment_score,"
                       " round(joy::numeric, 4) AS joy, round(negativity::numeric, 4) AS negativity,"
                       " round(anger::numeric, 4) AS anger, round(sadness::numeric, 4) AS sadness"
                       " FROM flowscribe_analytics.sentiment_daily WHERE day <= $1 ORDER BY day DESC LIMIT 5",
    "topics_daily": "SELECT * FROM flowscribe_analytics.topics_daily WHERE day = $1 ORDER BY conversations DESC, topic",
    "intents_daily": "SELECT * FROM flowscribe_analytics.intents_daily WHERE day = $1"
                     " ORDER BY conversations DESC, intent LIMIT 5",
    "keywords_daily": "SELECT * FROM flowscribe_analytics.keywords_daily WHERE day = $1"
                      " ORDER BY conversations DESC, keyword LIMIT 5",
    "entities_daily": "SELECT * FROM flowscribe_analytics.entities_daily WHERE day = $1"
                      " ORDER BY conversations DESC, entity_name LIMIT 5",
}


async def samples(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    last_day = HISTORY_END.date() - datetime.timedelta(days=1)
    out = {}
    for view, sql in SAMPLES.items():
        rows = await (conn.fetch(sql) if "$1" not in sql else conn.fetch(sql, last_day))
        out[view] = [{k: str(v) if not isinstance(v, (int, float, list)) else v for k, v in r.items()} for r in rows]
    return out


# --- the phase ------------------------------------------------------------------------------------


def _commit() -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent, check=False)
    return git.stdout.strip() or "unknown"


async def run(services: Any, bodies: Any, out: Path, quick: bool = False) -> dict[str, Any]:
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes")
    results: dict[str, Any] = {"code": _commit(), "when": when}
    full = not quick
    results["worker_cost"] = []
    for size, n in COST_N.items():
        n = n if full else n // 10
        say(f"analytics 1/3: worker with and without summaries, {COST_PAIRS} pairs of {n:,} {size}")
        cost = await worker_cost(services, bodies, out, size, n)
        results["worker_cost"].append(cost)
        say(f"  {size}: with summaries {cost['median_with']}/s, without {cost['median_without']}/s:"
            f" ratio {cost['ratio']}")
    await services.reset()
    n = HISTORY_N if full else HISTORY_N // 10
    say(f"analytics 2/3: a history of {n:,} typical conversations, {HISTORY_DAYS} days, {HISTORY_AGENTS} agents")
    conn = await asyncpg.connect(services.database_url)
    try:
        results["history"] = await load_history(conn, n)
        say(f"  stored in {results['history']['seconds']} s; queries over {WINDOW_DAYS} days")
        results["queries"] = await queries(conn)
        results["samples"] = await samples(conn)
        say("analytics 3/3: the summaries in SQL or in Python, batches of 100 stored typical callbacks")
        stored = history_bodies(n)
        batches = ([_callback(b, r) for b, r in itertools.islice(stored, 100)] for _ in range(20))
        # The same analyses as stored (decoded again: new callback ids, which the summaries only copy).
        results["sql_or_python"] = await sql_or_python(conn, batches)
        say(f"  {results['sql_or_python']}")
    finally:
        await conn.close()
    (out / "ANALYTICS.md").write_text(report(results))
    return results


def report(r: dict[str, Any]) -> str:
    cost, h, s = r["worker_cost"], r["history"], r["sql_or_python"]
    lines = [
        "# Analytics views: what they cost, what they save",
        "",
        "`python -m bench --only analytics` (bench/analytics.py); one run, every figure beside its baseline."
        f" Commit {r['code']}, {r['when']}, on a 2-core machine shared with other work (see each section).",
        "",
        "## The worker with the summaries against without",
        "",
    ]
    for c in cost:
        ms = c["batch_ms"]
        lines += [
            f"Drains of {c['payloads']:,} queued {c['size']} JSON callbacks by the product's worker process,"
            f" {c['pairs']} pairs interleaved (with, without, ...); payloads/s:",
            "",
            "| | runs | median | ms per batch, first / last tenth of the drain |",
            "|---|---|---:|---:|",
            f"| with summaries | {', '.join(map(str, c['with_per_s']))} | {c['median_with']} |"
            f" {ms['with'].get('first_tenth', '-')} / {ms['with'].get('last_tenth', '-')} |",
            f"| without (`--no-summaries`) | {', '.join(map(str, c['without_per_s']))} | {c['median_without']} |"
            f" {ms['without'].get('first_tenth', '-')} / {ms['without'].get('last_tenth', '-')} |",
            f"| **with ÷ without** (median of the pairs' ratios {', '.join(map(str, c['pair_ratios']))}) | |"
            f" **{c['ratio']}** ({c['cost_percent']}% cost) | |",
            "",
        ]
    lines += [
        "Wall-clock drains on a shared machine vary a lot from run to run; the CPU time of the same"
        " work is steadier. While the history below was written (batches of 100 typical callbacks through"
        " the worker's `write_batch`, every other one without its summaries), CPU ms per batch:",
        "",
        "| | worker process (decode + write) | its PostgreSQL backend | total |",
        "|---|---:|---:|---:|",
    ]
    for way, sides in h["cpu_ms_per_batch"].items():
        lines.append(f"| {way} summaries | {sides['worker']} | {sides['database']} |"
                     f" {round(sides['worker'] + sides['database'], 1)} |")
    lines += [
        f"| **with ÷ without** | | **{h['database_cpu_ratio']}** | **{h['cpu_ratio']}** |",
        "",
        "## The summaries in SQL or in Python",
        "",
        f"Rewriting the summaries of a batch of {s['batch_size']} stored typical callbacks, median of"
        f" {s['batches']} batches, each way in its own rolled-back transaction:",
        "",
        "| | wall ms per batch (median) | worker CPU ms | PostgreSQL backend CPU ms | total CPU ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, name in (("sql", "SQL: `flowscribe.summarise()` from the rows just written (the product)"),
                      ("python", "Python from the decoded payloads, then COPY (bench/summary_python.py)")):
        worker_ms, database_ms = s[f"{way}_worker_cpu_ms_per_batch"], s[f"{way}_database_cpu_ms_per_batch"]
        lines.append(f"| {name} | {s[f'{way}_ms_per_batch']} | {worker_ms} | {database_ms} |"
                     f" {round(worker_ms + database_ms, 1)} |")
    lines += [
        "",
        "CPU: means over the batches (the kernel counts backend CPU in 10 ms ticks). The worker is the"
        " busiest process of a deployment (bench/RESULTS.md), so the work it does not do counts most.",
        "",
        f"## Queries on a history of {h['conversations']:,} typical conversations",
        "",
        f"{HISTORY_DAYS} days, {HISTORY_AGENTS} agents, written through the worker's store path at {h['per_s']}"
        f" callbacks/s, then `VACUUM ANALYZE`. Rows: "
        + ", ".join(f"{k} {v:,}" for k, v in h["rows"].items()) + ". Table sizes (MB, with indexes and TOAST): "
        + ", ".join(f"{k} {v:,}" for k, v in h["table_mb"].items()) + ".",
        "",
        f"The last {WINDOW_DAYS} days; milliseconds per query (median of 30 runs on the views, 5 on the"
        " sentence-level tables, after one warm-up each); both return the same figures (checked):",
        "",
        "| query | rows | views ms | sentence tables ms | views faster by | same figures |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, q in r["queries"].items():
        lines.append(f"| {name} | {q['rows']} | {q['views_ms_median']} (max {q['views_ms_max']}) |"
                     f" {q['direct_ms_median']} | {q['speedup']}× | {q['same_figures']} |")
    lines += ["", "## A sample of every view on that history", ""]
    for view, rows in r["samples"].items():
        lines += [f"`flowscribe_analytics.{view}`:", ""]
        if rows:
            columns = list(rows[0])
            lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(str(row[k]) for k in columns) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines) + "\n"
