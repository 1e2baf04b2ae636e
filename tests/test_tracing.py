"""Traces: one callback's path across gateway, broker and worker, as OpenTelemetry sees it.

Through the real gateway, RabbitMQ, worker and PostgreSQL, with the SDK's in-memory
exporter in place of OTLP (and, in ``TestExport``, the real OTLP/HTTP exporter talking to
a receiver in the test that decodes the protobuf).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from gateway.server import server_options
from runtime import tracing
from runtime.settings import _signing_secrets
from runtime.trace_names import sampled_trace_id
from tests.support import JSON_SAMPLE, TOKEN, eventually
from tests.test_ops import ops
from tests.test_pipeline import callback_url, outcome_of, post

SIGNING_SECRET = "whsec_" + base64.b64encode(b"t" * 32).decode()
BAD_JSON = b'{"Success": true, "ConversationAnalysisModel": '  # cut short: dead-lettered at decode


@contextlib.contextmanager
def sampling(ratio: float | None) -> Iterator[None]:
    """OTEL_TRACES_SAMPLER(_ARG) for the tracing installed inside (None: the SDK's default, all)."""
    saved = {name: os.environ.pop(name, None) for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")}
    if ratio is not None:
        os.environ.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=str(ratio))
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@pytest.fixture(params=[None], ids=["all"])
def exported(request) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test (sampling ``request.param``), spans kept in memory."""
    exporter = InMemorySpanExporter()
    with sampling(request.param), tracing.installed("flowscribe-test", exporter=exporter):
        yield exporter


@pytest.fixture
async def gateway(exported, settings) -> AsyncIterator[TestServer]:
    """The gateway, created while tracing is on (conftest's, traced), signatures required."""
    signed = dataclasses.replace(settings, signing_secrets=_signing_secrets(SIGNING_SECRET))
    server = TestServer(create_app(signed))
    await server.start_server(**server_options(signed))
    try:
        yield server
    finally:
        await server.close()


def signed(body: bytes) -> dict[str, str]:
    import standardwebhooks

    msg_id = f"msg_{uuid.uuid4().hex}"
    when = datetime.datetime.now(datetime.UTC)
    signature = standardwebhooks.Webhook(SIGNING_SECRET).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature,
            "Content-Type": "application/json"}


async def post_signed(http, gateway, body: bytes) -> tuple[str, str]:
    """Post ``body``, signed; (message id, the signature header sent)."""
    headers = signed(body)
    async with http.post(callback_url(gateway), data=body, headers=headers) as r:
        assert r.status == 202, await r.text()
        return (await r.json())["id"], headers["webhook-signature"]


def by_name(spans: list[ReadableSpan], trace_id: int | None = None) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if trace_id is None or span.context.trace_id == trace_id:
            named.setdefault(span.name, []).append(span)
    return named


def with_attribute(spans, key: str, value) -> list[ReadableSpan]:
    return [s for s in spans if (s.attributes or {}).get(key) == value]


async def spans_until(exporter: InMemorySpanExporter, done, what: str) -> list[ReadableSpan]:
    async def probe():
        spans = list(exporter.get_finished_spans())
        return spans if done(spans) else None

    return await eventually(probe, what=what)


def assert_nothing_secret(spans: list[ReadableSpan], *secrets: str) -> None:
    """No token, signature, signing secret or piece of a body in any attribute, event or resource."""
    secrets_ = {TOKEN, SIGNING_SECRET, SIGNING_SECRET.removeprefix("whsec_"), *secrets}
    model = json.loads(JSON_SAMPLE)["ConversationAnalysisModel"]
    body_pieces = {model["ConversationText"][:40], *(s["Sentence"][:40] for s in model["ConversationSentences"])}
    assert all(len(piece) > 10 for piece in body_pieces)
    for span in spans:
        values = [span.name, *map(str, (span.attributes or {}).values()), *map(str, span.resource.attributes.values())]
        for event in span.events:
            values += [event.name, *map(str, (event.attributes or {}).values())]
        text = "\n".join(values)
        for secret in secrets_:
            assert secret not in text, (span.name, secret)
        for piece in body_pieces:
            assert piece not in text, (span.name, piece)


class TestOff:
    """Unless an OTLP endpoint is configured, nothing of OpenTelemetry is loaded."""

    def run(self, env: dict[str, str]) -> str:
        code = (
            "import sys\n"
            "from flowscribe_ingest import cli, commands\n"
            "from gateway.app import create_app\n"
            "import gateway.processes, worker.main, worker.consumer, ops.replay, ops.commands, console.app\n"
            "from runtime import tracing\n"
            "from runtime.settings import Settings\n"
            "with tracing.installed('x'):\n"
            "    create_app(Settings())\n"
            "    worker.consumer.Worker(Settings(), None)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('opentelemetry')}))\n"
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout.strip()

    def test_nothing_is_imported_while_off(self):
        assert self.run({}) == "[]"
        assert self.run({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}) == "[]"

    def test_an_endpoint_turns_it_on(self):
        assert self.run({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}) == "['opentelemetry']"

    def test_configured_reads_the_standard_variables(self):
        assert not tracing.configured({})
        assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
        assert not tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
        assert not tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"})


class TestDeploy:
    """deploy/ names the variables to turn traces on, commented; uncommented, they are what the README says."""

    def test_the_configmap_lines_uncommented(self):
        import re
        from pathlib import Path

        import yaml

        from runtime.settings import Settings

        text = (Path(__file__).parents[1] / "deploy" / "k8s" / "configmap.yaml").read_text()
        uncommented = re.sub(r"^  # ((OTEL_|FLOWSCRIBE_TRACE_URL)\w*:)", r"  \1", text, flags=re.MULTILINE)
        data = yaml.safe_load(uncommented)["data"]
        otel = {k: v for k, v in data.items() if k.startswith("OTEL_")}
        assert set(otel) == {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
                             "OTEL_RESOURCE_ATTRIBUTES"}
        assert tracing.configured(otel) and 0 < float(otel["OTEL_TRACES_SAMPLER_ARG"]) <= 1
        assert Settings.from_env(data).trace_url == data["FLOWSCRIBE_TRACE_URL"]
        readme = (Path(__file__).parents[1] / "README.md").read_text()
        assert all(f"`{name}`" in readme for name in otel)


class TestTraceIds:
    """The ledger keeps the trace id of a sampled traceparent only."""

    def test_a_replay_copy_keeps_the_trace_not_the_publish_time(self):
        from types import SimpleNamespace

        from ops.messages import replay_copy
        from runtime.messages import PROPERTIES

        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        letter = SimpleNamespace(body=b"{}", headers={"traceparent": traceparent, "tracestate": "v=1",
                                                      tracing.HEADER_PUBLISHED_AT: 1, "x-flowscribe-error": "E"},
                                 **dict.fromkeys(PROPERTIES))
        headers = replay_copy(letter).headers  # type: ignore[arg-type]  # the attributes it reads
        assert headers["traceparent"] == traceparent and headers["tracestate"] == "v=1"
        assert tracing.HEADER_PUBLISHED_AT not in headers and "x-flowscribe-error" not in headers

    def test_sampled_trace_id(self):
        assert sampled_trace_id({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) == (
            "4bf92f3577b34da6a3ce929d0e0e4736")
        assert sampled_trace_id({"traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
        assert sampled_trace_id({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}) is None
        assert sampled_trace_id({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}) is None
        assert sampled_trace_id({"traceparent": "garbage"}) is None
        assert sampled_trace_id({}) is None and sampled_trace_id(None) is None


class TestOneCallback:
    """One callback gives one connected trace: request, checks, publish, queue, decode, store, ack."""

    async def test_one_connected_trace_and_a_linked_batch(self, exported, gateway, http, db, start_worker):
        start_worker()
        message_id, signature = await post_signed(http, gateway, JSON_SAMPLE)
        assert await eventually(lambda: outcome_of(db, message_id), what="stored") == "ingested"
        spans = await spans_until(exported, lambda s: {"ack", "write batch"} <= {x.name for x in s}, "the ack span")

        (root,) = [s for s in spans if s.name == "POST /flowscribe/callback"]
        assert root.attributes[tracing.MESSAGE_ID] == message_id
        trace_id = root.context.trace_id
        named = by_name(spans, trace_id)
        assert set(named) == {"POST /flowscribe/callback", "publish", "queued", "decode", "store", "ack"}, named
        assert root.parent is None
        assert root.attributes["http.route"] == "/flowscribe/callback/{token}"
        assert root.attributes["http.response.status_code"] == 202
        assert root.attributes[tracing.OUTCOME] == "accepted"
        assert [e.name for e in root.events] == ["authenticated", "body read", "signature verified"]
        (publish,) = named["publish"]
        assert publish.parent.span_id == root.context.span_id
        assert publish.attributes[tracing.BODY_SIZE] == len(JSON_SAMPLE)
        for name in ("queued", "decode", "store", "ack"):
            (span,) = named[name]
            assert span.parent.span_id == publish.context.span_id, name  # the worker continues the message's trace
        assert named["queued"][0].end_time <= named["decode"][0].start_time
        assert named["decode"][0].end_time <= named["store"][0].end_time <= named["ack"][0].end_time
        store = named["store"][0].attributes
        assert store[tracing.OUTCOME] == "ingested" and store[tracing.BATCH_SIZE] == 1
        assert store[tracing.ANALYSIS_ID] == "c655c2ed-9abb-49e0-a8ce-399a897ca5d3"
        assert store[tracing.JOB_ID] == "f848df59-c75b-4a2b-8798-867de380b393"

        # The batch: a trace of its own, linked to the callback's, its statements (COMMIT too) its children.
        (batch,) = [s for s in spans if s.name == "write batch"]
        assert batch.context.trace_id != trace_id
        assert [link.context.trace_id for link in batch.links] == [trace_id]
        assert named["store"][0].links[0].context.span_id == batch.context.span_id
        statements = [s.name for s in spans if s.parent is not None and s.parent.span_id == batch.context.span_id]
        assert "COMMIT" in statements and "BEGIN" in statements, statements

        ledger = await db.fetchval("SELECT trace_id FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(message_id))
        assert ledger == f"{trace_id:032x}"
        assert_nothing_secret(spans, signature)

    async def test_a_batch_of_ten_links_ten_traces(self, exported, gateway, http, db, start_worker):
        ids = [(await post_signed(http, gateway, _variant(i)))[0] for i in range(10)]
        start_worker(batch_size=10, batch_wait=2.0)

        async def all_stored():
            return all([await outcome_of(db, i) for i in ids])

        await eventually(all_stored, what="ten stored")
        spans = await spans_until(exported, lambda s: sum(x.name == "ack" for x in s) == 10, "ten acks")
        (batch,) = [s for s in spans if s.name == "write batch"]
        roots = {s.context.trace_id for s in spans if s.name == "POST /flowscribe/callback"}
        assert len(roots) == 10
        assert {link.context.trace_id for link in batch.links} == roots
        assert batch.attributes[tracing.BATCH_SIZE] == 10
        for store in (s for s in spans if s.name == "store"):
            assert store.attributes[tracing.BATCH_SIZE] == 10
            assert store.links[0].context.span_id == batch.context.span_id
        assert_nothing_secret(spans)


class TestConsoleLink:
    """The console links a callback's page to its trace once a trace UI address is set."""

    async def test_the_callback_page_links_to_its_trace(self, settings, db, broker):
        from console.app import create_app as create_console
        from tests.console_support import VIEWER_TOKEN, Client, console_settings
        from tests.test_pipeline import T0, publish_as_gateway

        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        # A callback stored with a trace id, and one (as a worker of the version before stores it) without.
        traced = await publish_as_gateway(broker, JSON_SAMPLE, received_at=T0)
        await db.execute("INSERT INTO flowscribe.callbacks (id, received_at, content_type, body_sha256, body,"
                         " outcome, trace_id) VALUES ($1, $2, 'application/json', 'x', 'b', 'job_failed', $3)",
                         uuid.UUID(traced), T0, trace_id)
        untraced = uuid.uuid4()
        await db.execute("INSERT INTO flowscribe.callbacks (id, received_at, content_type, body_sha256, body,"
                         " outcome) VALUES ($1, $2, 'application/json', 'y', 'b', 'job_failed')", untraced, T0)
        for url, link in (("https://jaeger.example.com/trace/{trace_id}", True), ("", False)):
            server = TestServer(create_console(console_settings(settings, trace_url=url)))
            await server.start_server()
            client = Client(server)
            try:
                await client.login(VIEWER_TOKEN)
                _, page = await client.get(f"/callbacks/{traced}")
                assert (f'href="https://jaeger.example.com/trace/{trace_id}"' in page) is link
                assert trace_id in page
                response, page = await client.get(f"/callbacks/{untraced}")
                assert response.status == 200 and "jaeger" not in page and ">trace<" not in page
            finally:
                await client.close()
                await server.close()

    def test_the_address_must_name_the_trace_id(self):
        from runtime.settings import Settings, SettingsError

        assert Settings.from_env({"FLOWSCRIBE_TRACE_URL": "https://t.example/{trace_id}"}).trace_url
        with pytest.raises(SettingsError):
            Settings.from_env({"FLOWSCRIBE_TRACE_URL": "https://t.example/trace"})
        with pytest.raises(SettingsError):
            Settings.from_env({"FLOWSCRIBE_TRACE_URL": "javascript:alert(1)//{trace_id}"})


def _variant(i: int) -> bytes:
    sample = json.loads(JSON_SAMPLE)
    sample["ConversationAnalysisModel"]["ID"] = str(uuid.UUID(int=i + 1))
    sample["JobStatus"]["JobID"] = str(uuid.UUID(int=1000 + i))
    return json.dumps(sample).encode()


class TestErrors:
    """Refusals and dead letters are kept whatever the sampling; a replay goes on in the same trace."""

    @pytest.mark.parametrize("exported", [0.0], ids=["none-sampled"], indirect=True)
    async def test_refusals_are_kept_when_nothing_else_is(self, exported, gateway, http, db):
        async with http.post(str(gateway.make_url(f"/flowscribe/callback/{TOKEN}x")), data=JSON_SAMPLE,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401
        async with http.post(callback_url(gateway), data=JSON_SAMPLE, headers={"Content-Type": "image/png"}) as r:
            assert r.status in (401, 415)  # unsigned: 401 first
        message_id, _ = await post_signed(http, gateway, JSON_SAMPLE)  # accepted: not sampled at 0
        spans = await spans_until(exported, lambda s: len(s) >= 2, "two refusals")
        assert [s.attributes["http.response.status_code"] for s in spans] == [401, 401]
        assert all(s.attributes[tracing.OUTCOME] == "refused" for s in spans)
        assert spans[0].attributes[tracing.REASON] == "unknown or missing callback token"
        assert not with_attribute(spans, tracing.MESSAGE_ID, message_id)
        assert_nothing_secret(spans, TOKEN + "x")

    @pytest.mark.parametrize("exported", [None, 0.0], ids=["all-sampled", "none-sampled"], indirect=True)
    async def test_a_dead_letter_and_its_replay_share_the_callbacks_trace(
        self, exported, gateway, http, db, broker, settings, start_worker
    ):
        start_worker()
        message_id, _ = await post_signed(http, gateway, BAD_JSON)
        await spans_until(exported, lambda s: any(x.name == "dead-letter" for x in s), "the dead letter")
        run = await ops(settings, "dlq", "replay", "--force", message_id)
        assert "replayed 1," in run.out, run.out + run.err
        spans = await spans_until(exported, lambda s: sum(x.name == "dead-letter" for x in s) == 2, "dead again")
        trace_ids = {s.context.trace_id for s in spans if s.name != "write batch"}
        assert len(trace_ids) == 1, by_name(spans)
        story = [s.name for s in sorted(spans, key=lambda s: s.start_time or 0)
                 if s.name in ("decode", "dead-letter", "replay")]
        assert story == ["decode", "dead-letter", "replay", "decode", "dead-letter"]
        (first, second) = [s for s in spans if s.name == "decode"]
        assert first.attributes[tracing.OUTCOME] == "dead_lettered"
        assert first.attributes[tracing.REASON] == "PayloadDecodeError"
        for dead in by_name(spans)["dead-letter"]:
            assert dead.attributes[tracing.OUTCOME] == "dead_lettered"
            assert dead.attributes[tracing.REASON] == "PayloadDecodeError"
            assert dead.attributes[tracing.MESSAGE_ID] == message_id
        (replay,) = by_name(spans)["replay"]
        assert second.parent.span_id == replay.context.span_id  # the replay's copy carried its context
        assert_nothing_secret(spans)


    async def test_a_retry_goes_on_in_the_callbacks_trace(self, exported, gateway, http, db, start_worker):
        from tests.test_worker import TestTransientRetries

        conflicts = TestTransientRetries()
        await db.execute(conflicts.CONFLICT_TRIGGER)
        try:
            start_worker(max_attempts=2)
            message_id, _ = await post_signed(http, gateway, conflicts.colliding())
            spans = await spans_until(exported, lambda s: any(x.name == "dead-letter" for x in s), "exhausted")
            assert await outcome_of(db, message_id) is None
        finally:
            await db.execute(conflicts.DROP_TRIGGER)
        (root,) = [s for s in spans if s.name == "POST /flowscribe/callback"]
        mine = sorted((s for s in spans if s.context.trace_id == root.context.trace_id),
                      key=lambda s: s.start_time or 0)
        assert [s.name for s in mine if s.name in ("decode", "retry later", "dead-letter")] == [
            "decode", "retry later", "decode", "dead-letter"]
        (retry,) = [s for s in mine if s.name == "retry later"]
        assert retry.attributes[tracing.OUTCOME] == "retried"
        (dead,) = [s for s in mine if s.name == "dead-letter"]
        assert dead.attributes[tracing.REASON] == "RetriesExhausted"
        (queued,) = [s for s in mine if s.name == "queued" and s.parent.span_id == retry.context.span_id]
        assert queued.end_time - queued.start_time >= 0.9e9  # the retry queue's 1 s delay
        # The failed writes are in the batches' traces, linked to this one: their statements, down to the ROLLBACK.
        batches = [s for s in spans if s.name == "write batch"]
        assert any(link.context.trace_id == root.context.trace_id for b in batches for link in b.links)
        assert "ROLLBACK" in by_name(spans), sorted(by_name(spans))
        assert_nothing_secret(spans)


# ------------------------------------------------------------------------ OTLP over HTTP


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each export request's protobuf."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes]] = []  # (service.name, span name, trace id)
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.export)

    async def export(self, request: web.Request) -> web.Response:
        decoded = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in decoded.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope in resource_spans.scope_spans:
                self.spans += [(service, span.name, span.trace_id) for span in scope.spans]
        return web.Response(body=b"", content_type="application/x-protobuf")


@contextlib.asynccontextmanager
async def otlp(endpoint: str) -> AsyncIterator[None]:
    """Tracing exported over OTLP/HTTP to ``endpoint`` for the block (shut down off the event loop:
    the receiver runs on it)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_otlp(endpoint))
        try:
            yield
        finally:
            await asyncio.to_thread(stack.pop_all().close)


@contextlib.contextmanager
def _otlp(endpoint: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY",
                                            "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_BSP_EXPORT_TIMEOUT")}
    os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                      OTEL_EXPORTER_OTLP_TIMEOUT="1", OTEL_BSP_EXPORT_TIMEOUT="2000")
    try:
        with tracing.installed("flowscribe-otlp-test"):
            yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


class TestExport:
    """The SDK's OTLP/HTTP exporter delivers to a receiver; a dead one costs nothing but the spans."""

    async def _land(self, settings, http, db, start_worker, count: int) -> list[str]:
        server = TestServer(create_app(settings))
        await server.start_server(**server_options(settings))
        try:
            start_worker()
            ids = [await post(http, server, _variant(i)) for i in range(count)]

            async def all_stored():
                return all([await outcome_of(db, i) for i in ids])

            await eventually(all_stored, what=f"{count} stored")
        finally:
            await server.close()
        return ids

    async def test_spans_reach_a_receiver(self, settings, http, db, start_worker):
        receiver = Receiver()
        server = TestServer(receiver.app)
        await server.start_server()
        try:
            async with otlp(str(server.make_url(""))):
                await self._land(settings, http, db, start_worker, 3)
                names = await eventually(lambda: _async({n for _, n, _ in receiver.spans} >= {"ack", "write batch"}),
                                         what="spans exported")
                assert names
        finally:
            await server.close()
        services = {s for s, _, _ in receiver.spans}
        assert services == {"flowscribe-otlp-test"}
        assert len({t for _, n, t in receiver.spans if n == "POST /flowscribe/callback"}) == 3

    async def test_forked_gateway_processes_export_their_spans_at_exit(self, settings, broker):
        """FLOWSCRIBE_GATEWAY_PROCESSES=2: the SDK's export thread is made again in each child, and
        a child's last spans leave before it exits (export held back until then: a 60 s schedule)."""
        from tests.support import CliProcess, service_env

        receiver = Receiver()
        server = TestServer(receiver.app)
        await server.start_server()
        try:
            env = service_env(settings, FLOWSCRIBE_GATEWAY_PROCESSES="2",
                              OTEL_EXPORTER_OTLP_ENDPOINT=str(server.make_url("")), OTEL_BSP_SCHEDULE_DELAY="60000")
            gateway = await CliProcess.start("gateway", env)
            try:
                port = (await gateway.event("gateway processes started"))["port"]
                for _ in range(8):
                    async with aiohttp.ClientSession() as session:  # a connection each: both processes serve
                        async with session.post(f"http://127.0.0.1:{port}/flowscribe/callback/{TOKEN}",
                                                data=JSON_SAMPLE, headers={"Content-Type": "application/json"}) as r:
                            assert r.status == 202
                assert not receiver.spans  # held back by the schedule
            finally:
                assert await gateway.stop() == 0, gateway.output
        finally:
            await server.close()
        requests = [(s, t) for s, n, t in receiver.spans if n == "POST /flowscribe/callback"]
        assert len(requests) == 8 and {s for s, _ in requests} == {"flowscribe-ingest-gateway"}
        served = {e["pid"] for e in gateway.events() if e.get("event") == "callback accepted"}
        assert len(served) == 2, "both processes served (and so exported)"

    async def test_a_dead_receiver_costs_only_the_spans(self, settings, http, db, start_worker):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # closed again: nothing listens there
        async with otlp(f"http://127.0.0.1:{port}"):
            ids = await self._land(settings, http, db, start_worker, 20)
        assert len(ids) == 20


async def _async(value):
    await asyncio.sleep(0)
    return value

