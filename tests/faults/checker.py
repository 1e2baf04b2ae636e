"""A queue checker in the spirit of Jepsen's: send callbacks, inject faults, then account for every one.

Every callback carries a unique analysis ID. Each gateway answer is recorded
as ``ok`` (2xx), ``failed`` (4xx) or ``unknown`` (timeout, 5xx, reset) after the
sender's own retries (Flowscribe retries too). Once the faults stop and the
queues drain:

- lost: ok, but neither stored nor in the dead-letter queue;
- unexpected: stored, but never sent;
- duplicated: stored more than once (more than one ``ingested`` ledger row for
  one analysis, or repeated child rows);
- recovered: unknown, yet stored (the broker had it after all).

Pass: lost 0, unexpected 0, duplicated 0, and every queue empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import aio_pika
import aiohttp
import asyncpg

from schemas import topology
from tests.support import JSON_SAMPLE

ALL_QUEUES = (
    topology.CALLBACK_QUEUE,
    *(topology.retry_queue(d) for d in topology.RETRY_DELAYS_SECONDS),
)


def callback_body(analysis_id: uuid.UUID, *, poison: bool = False) -> bytes:
    """A small, valid callback for one analysis (or, if ``poison``, one that can never decode)."""
    if poison:
        analysis = {"ID": str(analysis_id), "ConversationSentences": "poison"}
        return json.dumps({"ConversationAnalysisModel": analysis}).encode()
    sample = json.loads(JSON_SAMPLE)
    model = sample["ConversationAnalysisModel"]
    model["ID"] = str(analysis_id)
    model["ConversationText"] = f"fault-suite {analysis_id}"
    sample["JobStatus"]["JobID"] = str(uuid.uuid4())
    return json.dumps(sample).encode()


@dataclasses.dataclass
class History:
    """What the sender saw, per analysis id."""

    results: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)  # ok | failed | unknown
    poison: set[uuid.UUID] = dataclasses.field(default_factory=set)
    attempts: int = 0
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    slowest_refusal: float = 0.0  # seconds: how long the longest non-2xx answer (or failure) took
    slowest_ok: float = 0.0  # seconds: the longest any callback waited for its 2xx (a held publish)
    ok_latencies: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (answered at, seconds)
    first_ok_after: dict[str, float] = dataclasses.field(default_factory=dict)  # marks -> monotonic time
    marks: dict[str, float] = dataclasses.field(default_factory=dict)
    ok_times: list[float] = dataclasses.field(default_factory=list)  # monotonic time of every 2xx

    def mark(self, name: str) -> None:
        """Note a moment (e.g. "broker back"); the first 2xx after it is recorded too."""
        self.marks[name] = time.monotonic()

    def recovery(self, name: str) -> float | None:
        """Seconds from mark ``name`` to the first 2xx answer after it."""
        if name in self.marks and name in self.first_ok_after:
            return self.first_ok_after[name] - self.marks[name]
        return None

    def longest_gap(self, name: str) -> float | None:
        """Seconds without a 2xx answer, at most, from mark ``name`` until the answers stopped."""
        return longest_gap(self.marks.get(name), self.ok_times)

    def _answered_ok(self, at: float) -> None:
        self.ok_times.append(at)
        for name, marked in self.marks.items():
            if name not in self.first_ok_after and at >= marked:
                self.first_ok_after[name] = at

    @property
    def refusals(self) -> int:
        """Answers that were neither 2xx nor 4xx: 503s, and requests that failed or timed out.
        Each may be a callback the sender never sends again (Flowscribe documents no retry)."""
        return sum(n for status, n in self.statuses.items() if not status.startswith(("2", "4")))

    def ids(self, result: str) -> set[uuid.UUID]:
        return {k for k, v in self.results.items() if v == result}


def longest_gap(since: float | None, times: list[float]) -> float | None:
    """The longest time between ``since`` and the events in ``times`` after it, and between those."""
    if since is None:
        return None
    after = sorted(t for t in times if t >= since)
    if not after:
        return None
    return round(max(b - a for a, b in zip([since, *after], after, strict=False)), 2)


class CommitWatch:
    """Samples how many callbacks are committed, to tell how long commits stopped at a fault."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self.times: list[float] = []  # when the count was seen to grow
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        seen = -1
        while True:
            try:
                count = await asyncio.wait_for(self.db.fetchval("SELECT count(*) FROM flowscribe.callbacks"), 2)
            except Exception:  # noqa: BLE001 - the database may be the fault: no sample then
                await asyncio.sleep(0.1)
                continue
            if seen >= 0 and count > seen:
                self.times.append(time.monotonic())
            seen = count
            await asyncio.sleep(0.1)  # the sampling period

    def longest_stall(self, since: float | None) -> float | None:
        return longest_gap(since, self.times)

    async def __aenter__(self) -> CommitWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def send_callbacks(
    http: aiohttp.ClientSession,
    url: str | Sequence[str],
    count: int,
    *,
    concurrency: int = 16,
    poison_rate: float = 0.0,
    retry_for: float = 60.0,
    request_timeout: float = 10.0,
    seed: int = 7,
    copies: int = 1,
    history: History | None = None,
    rate: float | None = None,
    until: asyncio.Event | None = None,
    ids: Sequence[uuid.UUID] | None = None,
    body: Callable[[uuid.UUID], bytes] | None = None,
) -> History:
    """Post ``count`` callbacks (each ``copies`` times at once), retrying unknown answers like a vendor.

    ``rate`` paces the load (callbacks/s), so a fault can land in the middle of it;
    ``until`` ends it early (what was taken is still answered). Several ``url``s
    (gateways) are taken in turn, a retry going to the next, as a load balancer
    would. ``ids`` and ``body`` choose the analyses and their bodies (versions).
    """
    history = history if history is not None else History()
    rng = random.Random(seed)
    urls = [url] if isinstance(url, str) else list(url)
    turn = 0
    todo: asyncio.Queue[uuid.UUID] = asyncio.Queue()
    chosen = list(ids) if ids is not None else [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]
    for analysis_id in chosen:
        if rng.random() < poison_rate:
            history.poison.add(analysis_id)
        todo.put_nowait(analysis_id)

    async def post_until_answered(body: bytes) -> str:
        nonlocal turn
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            history.attempts += 1
            started = time.monotonic()
            turn += 1
            try:
                async with http.post(
                    urls[turn % len(urls)], data=body, headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=request_timeout),
                ) as response:
                    history.statuses[str(response.status)] += 1
                    if 200 <= response.status < 300:
                        history._answered_ok(time.monotonic())
                        waited = time.monotonic() - started
                        history.slowest_ok = max(history.slowest_ok, waited)
                        history.ok_latencies.append((started + waited, waited))
                        return "ok"
                    if 400 <= response.status < 500:
                        return "failed"
            except (aiohttp.ClientError, TimeoutError) as e:
                history.statuses[type(e).__name__] += 1
            history.slowest_refusal = max(history.slowest_refusal, time.monotonic() - started)
            if time.monotonic() > deadline:
                return "unknown"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    pause = concurrency / rate if rate else 0.0  # each sender's share of the pace

    async def sender() -> None:
        while True:
            if pause:
                await asyncio.sleep(pause)  # pacing the load, not waiting for work
            if until is not None and until.is_set():
                return
            try:
                analysis_id = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            content = (body(analysis_id) if body is not None
                       else callback_body(analysis_id, poison=analysis_id in history.poison))
            answers = await asyncio.gather(*(post_until_answered(content) for _ in range(copies)))
            history.results[analysis_id] = (
                "ok" if "ok" in answers else "failed" if "failed" in answers else "unknown"
            )

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return history


@dataclasses.dataclass
class Verdict:
    sent: int
    ok: int
    failed: int
    unknown: int
    stored: int
    dead_lettered: int
    lost: int
    unexpected: int
    duplicated: int
    recovered: int
    queued: int
    poison_dead_lettered: int
    good_dead_lettered: int
    dead_letters_without_reason: int
    unsummarised: int  # stored analyses without their analytics summary, or summaries without one

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0 and self.unexpected == 0 and self.duplicated == 0 and self.queued == 0
            and self.good_dead_lettered == 0 and self.dead_letters_without_reason == 0
            and self.unsummarised == 0
        )

    def line(self, scenario: str) -> str:
        figures = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())
        return f"[faults] {scenario}: {figures} -> {'PASS' if self.passed else 'FAIL'}"


async def stored_analysis_ids(db: asyncpg.Pool) -> set[uuid.UUID]:
    return {r[0] for r in await db.fetch("SELECT id FROM flowscribe.analyses")}


async def queue_depths(channel: aio_pika.abc.AbstractChannel) -> dict[str, int]:
    depths = {}
    for name in ALL_QUEUES:
        queue = await channel.declare_queue(name, passive=True)
        depths[name] = queue.declaration_result.message_count or 0
    return depths


async def wait_until_accounted(
    history: History, db: asyncpg.Pool, channel: aio_pika.abc.AbstractChannel, timeout: float = 120.0
) -> None:
    """Wait (with a deadline) until every ok callback is stored or dead-lettered and the queues are empty."""
    expected_good = history.ids("ok") - history.poison
    expected_poison = history.ids("ok") & history.poison
    deadline = time.monotonic() + timeout
    while True:
        stored = await stored_analysis_ids(db)
        dlq = await channel.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
        depths = await queue_depths(channel)
        if (expected_good <= stored and dlq.declaration_result.message_count >= len(expected_poison)
                and not any(depths.values())):
            return
        if time.monotonic() > deadline:
            return  # the verdict will say what is missing
        await asyncio.sleep(0.1)


async def check(
    history: History, db: asyncpg.Pool, channel: aio_pika.abc.AbstractChannel,
    *, versioned: frozenset[uuid.UUID] = frozenset(),
) -> Verdict:
    """Account for every callback sent (the workers must be stopped first).

    ``versioned``: analyses sent in several versions on purpose, each of which
    may have been ``ingested`` in turn (an older one first, then the newer).
    """
    stored = await stored_analysis_ids(db)
    ingested = Counter(
        r[0] for r in await db.fetch(
            "SELECT analysis_id FROM flowscribe.callbacks WHERE outcome = 'ingested'"
        )
    )
    doubled_children = await db.fetchval(
        "SELECT count(*) FROM (SELECT analysis_id, id FROM flowscribe.sentences"
        " GROUP BY 1, 2 HAVING count(*) > 1) AS d"
    )
    summarised = {r[0] for r in await db.fetch("SELECT analysis_id FROM flowscribe.conversation_summaries")}
    dead = await channel.get_queue(topology.DEAD_LETTER_QUEUE)
    dead_ids: set[uuid.UUID] = set()
    without_reason = 0
    while (message := await dead.get(fail=False, no_ack=True)) is not None:
        if not (message.headers or {}).get(topology.HEADER_ERROR):
            without_reason += 1
        with contextlib.suppress(ValueError, KeyError, TypeError):
            dead_ids.add(uuid.UUID(json.loads(message.body)["ConversationAnalysisModel"]["ID"]))
    ok = history.ids("ok")
    sent = set(history.results)
    return Verdict(
        sent=len(sent),
        ok=len(ok),
        failed=len(history.ids("failed")),
        unknown=len(history.ids("unknown")),
        stored=len(stored),
        dead_lettered=len(dead_ids),
        lost=len(ok - stored - dead_ids),
        unexpected=len((stored | dead_ids) - sent),
        duplicated=sum(1 for a, n in ingested.items() if n > 1 and a not in versioned) + doubled_children,
        recovered=len(history.ids("unknown") & (stored | dead_ids)),
        queued=sum((await queue_depths(channel)).values()),
        poison_dead_lettered=len(dead_ids & history.poison),
        good_dead_lettered=len(dead_ids - history.poison),
        dead_letters_without_reason=without_reason,
        unsummarised=len(stored ^ summarised),
    )


# Figures of every scenario run in this session, printed at the end of the run.
REPORT: list[str] = []
