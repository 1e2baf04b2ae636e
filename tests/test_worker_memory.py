"""What a worker holds is bounded by its configuration, not by what callbacks contain:
bodies past FLOWSCRIBE_WORKER_MAX_HELD_BYTES stay in the queue, decoded rows past
FLOWSCRIBE_WORKER_MAX_HELD_ROWS wait for the next batch, and everything still lands once.
(Memory under a flood of 16 MiB callbacks is measured in bench/, phase `memory`.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import pytest

from schemas import topology
from tests.support import JSON_SAMPLE, eventually
from tests.test_pipeline import T0, publish_as_gateway
from tests.test_worker import _count_is, queue_depth
from worker import consumer
from worker.budget import BodyBudget

BODY_BYTES = 100_000


def small_callback() -> bytes:
    sample = json.loads(JSON_SAMPLE)
    sample["ConversationAnalysisModel"]["ID"] = str(uuid.uuid4())
    return json.dumps(sample).encode()


def padded_callback() -> bytes:
    """The JSON sample as a new analysis, padded to BODY_BYTES with conversation text."""
    sample = json.loads(JSON_SAMPLE)
    sample["ConversationAnalysisModel"]["ID"] = str(uuid.uuid4())
    sample["ConversationAnalysisModel"]["ConversationText"] = ""
    sample["ConversationAnalysisModel"]["ConversationText"] = "x" * (BODY_BYTES - len(json.dumps(sample)))
    body = json.dumps(sample).encode()
    assert len(body) == BODY_BYTES
    return body


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> list[consumer.Worker]:
    """The in-process workers started by the test, to watch what they hold while they run."""
    started: list[consumer.Worker] = []
    original = consumer.Worker.__init__

    def init(self: consumer.Worker, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        started.append(self)

    monkeypatch.setattr(consumer.Worker, "__init__", init)
    return started


async def watch_unsettled(workers: list[consumer.Worker], stop: asyncio.Event) -> int:
    """The most deliveries a worker held unsettled (its channel's view) until ``stop``."""
    most = 0
    while not stop.is_set():
        if workers:
            most = max(most, workers[0].unsettled)
        await asyncio.sleep(0.002)
    return most


class TestBodyBudget:
    async def test_bodies_held_stay_within_the_budget_and_all_land(self, db, broker, start_worker, workers):
        n, budget = 40, 4 * BODY_BYTES
        for _ in range(n):
            await publish_as_gateway(broker, padded_callback(), received_at=T0)
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_unsettled(workers, stop))
        # The default prefetch (300) would take all 40 at once: 4 MB for a 400 kB budget.
        start_worker(worker_max_held_bytes=budget, max_body_bytes=2 * BODY_BYTES, batch_wait=0.2)
        await eventually(lambda: _count_is(db, n), what="every callback stored", timeout=60)
        stop.set()
        most = await watcher
        # One more may be in hand for an instant: delivered, and on its way back to the queue.
        assert most * BODY_BYTES <= budget + BODY_BYTES, most
        assert workers[0].bodies.peak <= budget
        assert await queue_depth(broker) == 0
        assert await db.fetchval("SELECT count(DISTINCT analysis_id) FROM flowscribe.callbacks") == n

    async def test_a_callback_larger_than_the_budget_lands_on_its_own(self, db, broker, start_worker, workers):
        for _ in range(3):
            await publish_as_gateway(broker, padded_callback(), received_at=T0)
        start_worker(worker_max_held_bytes=BODY_BYTES // 2, max_body_bytes=BODY_BYTES)
        await eventually(lambda: _count_is(db, 3), what="the oversized callbacks stored", timeout=60)
        assert workers[0].bodies.peak == BODY_BYTES  # one at a time


    async def test_handed_back_callbacks_are_never_dead_lettered(self, db, broker, amqp_url, start_worker, workers):
        """Busy workers with room for two maximum-size callbacks each hand deliveries back over and
        over; a callback handed back never failed, so the queue's delivery limit must not count it.
        (A policy lowers the limit to 1 here: each hand-back by requeue would count.)"""
        rounds, small, big = 8, 20, 5
        vhost = amqp_url.rsplit("/", 1)[1]
        policy = ["rabbitmqctl", "-q", "set_policy", "-p", vhost, "low-delivery-limit", "^flowscribe\\.callbacks$",
                  '{"delivery-limit": 1}', "--apply-to", "queues"]
        await asyncio.to_thread(subprocess.run, policy, check=True, capture_output=True)
        try:
            # Runs of small callbacks widen the workers' credit; the maximum-size ones after them
            # then arrive more at once than the budget holds, and go back to the queue.
            for _ in range(rounds):
                for _ in range(small):
                    await publish_as_gateway(broker, small_callback(), received_at=T0)
                for _ in range(big):
                    await publish_as_gateway(broker, padded_callback(), received_at=T0)
            for _ in range(2):
                start_worker(worker_max_held_bytes=2 * BODY_BYTES, max_body_bytes=BODY_BYTES, batch_wait=0.05,
                             batch_size=5)
            n = rounds * (small + big)

            async def accounted() -> bool:  # stored, or dead-lettered by the broker
                dead = await queue_depth(broker, topology.DEAD_LETTER_QUEUE)
                return await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") + dead == n
            await eventually(accounted, what="every callback stored or dead-lettered", timeout=90)
        finally:
            await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", "clear_policy", "-p", vhost,
                                                     "low-delivery-limit"], check=True, capture_output=True)
        assert sum(w.bodies.handed_back for w in workers) > 0, "nothing was handed back: the test proves nothing"
        dead = await queue_depth(broker, topology.DEAD_LETTER_QUEUE)
        assert dead == 0, f"{dead} callbacks dead-lettered that never failed"


class TestRowBudget:
    async def test_a_batch_closes_at_the_row_budget(self, db, broker, start_worker, workers):
        # The sample is 13 rows (analysis, 2 of each of its six lists); 5 fit in no batch with another.
        for _ in range(6):
            await publish_as_gateway(broker, padded_callback(), received_at=T0)
        start_worker(worker_max_held_rows=5, batch_wait=0.5)  # without the budget: one batch of 6
        await eventually(lambda: _count_is(db, 6), what="every callback stored")
        worker = workers[0]
        value = worker.metrics.registry.get_sample_value

        async def counted() -> bool:  # the metrics of a batch are counted just after its commit
            return value("flowscribe_messages_consumed_total", {"outcome": "ingested"}) == 6

        await eventually(counted, what="every batch counted")
        batches = value("flowscribe_batch_size_count")
        assert batches == 6
        assert worker.rows.peak <= 5 + 13  # the limit, and the one callback that crossed it


class TestBodyBudgetAccount:
    """The account itself (worker.budget), without a broker."""

    def test_starts_assuming_the_largest_body_then_widens(self) -> None:
        budget = BodyBudget(limit=100, most_prefetch=30, largest_body=40)
        assert budget.prefetch() == 2  # two bodies of the largest size the gateway takes
        for _ in range(2):
            assert budget.admit(3)
        assert budget.resize(current=2, seen=2)  # a round of small bodies: room for more
        assert budget.prefetch() == 30  # (100 - 6) // 3, at most the configured prefetch

    def test_a_body_that_does_not_fit_is_refused_unless_nothing_is_held(self) -> None:
        budget = BodyBudget(limit=100, most_prefetch=30, largest_body=10)
        assert budget.admit(150)  # alone: it lands on its own
        assert not budget.admit(1)
        budget.release(150)
        assert budget.admit(60) and not budget.admit(60) and budget.handed_back == 2
        assert budget.peak == 150 and budget.prefetch() == 0  # no room for the largest seen: wait

    def test_narrows_at_once_when_bodies_grow(self) -> None:
        budget = BodyBudget(limit=100, most_prefetch=30, largest_body=1)
        budget.admit(1)
        assert not budget.resize(current=30, seen=1)
        budget.admit(20)
        assert budget.resize(current=30, seen=2)  # 30 bodies of 20 would not fit
