"""Metrics, probes and log lines: what an operator sees of the gateway and the workers."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import logging
import secrets
import types
import urllib.parse

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.publisher import PublishFailed
from runtime import logs
from tests.conftest import TABLES
from tests.support import JSON_SAMPLE, TOKEN, TcpProxy, eventually
from tests.test_pipeline import callback_url, post
from worker import http as worker_http
from worker.metrics import OUTCOMES, WorkerMetrics

POISON = b'{"Success": tru'  # accepted by the gateway (it never parses), dead-lettered by the worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Prometheus text as {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        return await r.text()


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    return parse(await scrape_text(http, url))


def consumed(samples: Samples) -> dict[str, float | None]:
    return {o: value(samples, "flowscribe_messages_consumed_total", outcome=o) for o in OUTCOMES}


class TestGatewayMetrics:
    """The gateway counts its answers by status (never by path) and times each publish."""

    async def test_answers_by_status_and_publish_latency(self, gateway, http, broker):
        await post(http, gateway, JSON_SAMPLE)
        wrong = str(gateway.make_url("/flowscribe/callback/wrong-token-" + secrets.token_hex(4)))
        async with http.post(wrong, data=JSON_SAMPLE, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401
        async with http.post(callback_url(gateway), data=b"x", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.get(gateway.make_url("/healthz")) as r:
            assert r.status == 200  # not a callback: not counted

        text = await scrape_text(http, str(gateway.make_url("/metrics")))
        samples = parse(text)
        statuses = {dict(labels)["status"]: v for (name, labels), v in samples.items()
                    if name == "flowscribe_callbacks_received_total"}
        assert statuses == {"202": 1, "401": 1, "415": 1}
        assert value(samples, "flowscribe_publish_seconds_count", result="confirmed") == 1
        assert value(samples, "flowscribe_publish_seconds_count", result="failed") == 0
        assert 0 < value(samples, "flowscribe_publish_seconds_sum", result="confirmed") < 3
        # Nothing of the request's path (the token is in it) reaches a label.
        assert TOKEN not in text and "wrong-token" not in text and "/flowscribe/callback" not in text

    async def test_refusals_before_the_handler_are_counted_too(self, settings, http):
        """403 from the source guard (a middleware inside ours) is counted like any answer."""
        guarded = dataclasses.replace(settings, allowed_networks=(ipaddress.ip_network("192.0.2.0/24"),))
        server = TestServer(create_app(guarded))
        await server.start_server()
        try:
            async with http.post(server.make_url(f"/flowscribe/callback/{TOKEN}"), data=JSON_SAMPLE,
                                 headers={"Content-Type": "application/json"}) as r:
                assert r.status == 403
            samples = await scrape(http, str(server.make_url("/metrics")))
        finally:
            await server.close()
        assert value(samples, "flowscribe_callbacks_received_total", status="403") == 1

    def test_a_failed_publish_is_timed_as_failed(self):
        metrics = GatewayMetrics()
        with pytest.raises(PublishFailed), metrics.publishing():
            raise PublishFailed("not confirmed")
        with metrics.publishing():
            pass
        samples = parse(_exposition(metrics.registry))
        assert value(samples, "flowscribe_publish_seconds_count", result="failed") == 1
        assert value(samples, "flowscribe_publish_seconds_count", result="confirmed") == 1


class TestWorkerMetrics:
    """A worker's /metrics counts what it did: outcomes, rows per table, batches, lag."""

    async def test_counts_agree_with_the_database(self, gateway, http, db, broker, start_worker, caplog):
        caplog.set_level(logging.INFO, logger="worker")
        await post(http, gateway, JSON_SAMPLE)
        await post(http, gateway, JSON_SAMPLE)  # the vendor retrying: a duplicate
        await post(http, gateway, POISON)
        running = start_worker()
        url = f"http://127.0.0.1:{await running.http_port()}/metrics"

        async def all_three_done() -> Samples | None:
            samples = await scrape(http, url)
            return samples if sum(n or 0 for n in consumed(samples).values()) == 3 else None

        samples = await eventually(all_three_done, what="the worker to finish the three messages")
        assert consumed(samples) == {
            "ingested": 1, "duplicate": 1, "superseded": 0, "job_failed": 0,
            "redelivered": 0, "dead_lettered": 1, "retried": 0,
        }
        for table in TABLES:
            in_db = await db.fetchval(f"SELECT count(*) FROM flowscribe.{table}")
            assert value(samples, "flowscribe_rows_written_total", table=table) == in_db, table
        committed = value(samples, "flowscribe_batch_size_count")
        assert committed >= 1
        assert value(samples, "flowscribe_batch_size_sum") == 2  # the poison never reached a batch
        assert value(samples, "flowscribe_batch_write_seconds_count") == committed
        assert value(samples, "flowscribe_end_to_end_lag_seconds_count") == 2
        assert 0 < value(samples, "flowscribe_end_to_end_lag_seconds_sum") < 60
        assert value(samples, "flowscribe_batches_held") == 0
        assert value(samples, "process_resident_memory_bytes") > 0

    async def test_database_outage_shows_as_a_held_batch(
        self, settings, gateway, http, db, start_worker, caplog
    ):
        caplog.set_level(logging.INFO, logger="worker")
        target = urllib.parse.urlsplit(settings.database_url)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
        await proxy.open()
        await proxy.close()  # the database is "down" from the worker's side
        try:
            running = start_worker(database_url=proxy.url(settings.database_url), database_retry_max_delay=0.2)
            base = f"http://127.0.0.1:{await running.http_port()}"
            await post(http, gateway, JSON_SAMPLE)

            async def held() -> bool:
                return value(await scrape(http, base + "/metrics"), "flowscribe_batches_held") == 1

            await eventually(held, what="the batch to be held")
            async with http.get(base + "/readyz") as r:
                assert r.status == 503
                assert (await r.json())["error"] == "database not reachable"

            await proxy.open()

            async def landed() -> bool:
                samples = await scrape(http, base + "/metrics")
                return (value(samples, "flowscribe_batches_held") == 0
                        and consumed(samples)["ingested"] == 1)

            await eventually(landed, what="the batch to land once the database is back")
            async with http.get(base + "/readyz") as r:
                assert r.status == 200
        finally:
            await proxy.close()

    def test_held_until_the_worker_finishes_with_a_message(self):
        metrics = WorkerMetrics()
        metrics.database_unavailable()
        assert value(parse(_exposition(metrics.registry)), "flowscribe_batches_held") == 1
        metrics.count("dead_lettered")
        assert value(parse(_exposition(metrics.registry)), "flowscribe_batches_held") == 0


class TestWorkerProbes:
    """/healthz says the process lives; /readyz that both the broker and the database can be used."""

    async def test_a_running_worker_is_alive_and_ready(self, http, start_worker, caplog):
        caplog.set_level(logging.INFO, logger="worker")
        running = start_worker()
        base = f"http://127.0.0.1:{await running.http_port()}"
        async with http.get(base + "/healthz") as r:
            assert r.status == 200

        async def ready() -> bool:
            async with http.get(base + "/readyz") as r:
                return r.status == 200

        await eventually(ready, what="the worker to be ready")

    async def test_not_ready_without_broker_or_database(self, settings, http):
        broker = types.SimpleNamespace(ready=False)
        closed = TcpProxy("127.0.0.1", 9)  # a port that is bound, then freed: nothing listens
        await closed.open()
        await closed.close()
        local = dataclasses.replace(settings, worker_http_host="127.0.0.1", worker_http_port=0)
        async with asyncpg.create_pool(closed.url(settings.database_url), min_size=0) as dead_pool, \
                asyncpg.create_pool(settings.database_url, min_size=0) as live_pool:
            for pool, broker_ready, expected in [
                (live_pool, False, (503, "broker not connected")),
                (dead_pool, True, (503, "database not reachable")),
                (live_pool, True, (200, None)),
            ]:
                broker.ready = broker_ready
                readiness = worker_http.Readiness(broker, pool)  # type: ignore[arg-type]
                async with worker_http.serving(local, WorkerMetrics().registry, readiness) as port:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        answer = await r.json()
                        assert (r.status, answer.get("error")) == expected


class TestLogLines:
    """One JSON line per callback and per batch, with message id, analysis id and outcome; no secrets, no bodies."""

    async def test_lines_of_a_worker_run(self, gateway, http, db, broker, start_worker):
        marker = "body-marker-" + secrets.token_hex(8)
        sample = json.loads(JSON_SAMPLE)
        sample["ConversationAnalysisModel"]["ConversationText"] = marker
        analysis_id = sample["ConversationAnalysisModel"]["ID"]

        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JsonFormatter("test"))
        loggers = [logging.getLogger(name) for name in ("gateway", "worker")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        try:
            stored = await post(http, gateway, json.dumps(sample).encode())
            again = await post(http, gateway, json.dumps(sample).encode())
            poison = await post(http, gateway, POISON)
            worker = start_worker()

            async def finished() -> bool:
                return await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == 2

            await eventually(finished, what="both good callbacks stored")
            stopped = await worker.stop()
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(handler)
                logger.setLevel(level)
        assert stopped.outcomes["dead_lettered"] == 1

        text = stream.getvalue()
        lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
        by_event: dict[str, list[dict]] = {}
        for line in lines:
            by_event.setdefault(line["event"], []).append(line)

        accepted = {line["message_id"] for line in by_event["callback accepted"]}
        assert accepted == {stored, again, poison}
        per_callback = {line["message_id"]: line for line in by_event["callback stored"]}
        assert set(per_callback) == {stored, again}
        assert {(line["analysis_id"], line["outcome"]) for line in per_callback.values()} == {
            (analysis_id, "ingested"), (analysis_id, "duplicate"),
        }
        (dead,) = by_event["callback dead-lettered"]
        assert (dead["message_id"], dead["outcome"], dead["stage"]) == (poison, "dead_lettered", "decode")
        batches = by_event["batch committed"]
        assert sum(line["messages"] for line in batches) == 2
        assert all(line["rows"] > 0 and line["ms"] >= 0 for line in batches)
        assert all(line["level"] in ("info", "warning") for line in lines)
        assert TOKEN not in text
        assert marker not in text and "sample string" not in text  # no body, not even a piece


def _exposition(registry) -> str:
    import prometheus_client

    return prometheus_client.generate_latest(registry).decode()
