"""The pieces agree with each other: Structs and tables, settings and README, compose and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
from pathlib import Path

import aiohttp
import asyncpg
import yaml

from flowscribe_ingest.cli import COMMANDS
from runtime.settings import Settings
from schemas import topology
from schemas.payload import CHILD_TABLES
from store.rows import ANALYSIS_COLUMNS, CALLBACK_COLUMNS, CHILD_COLUMNS
from tests.support import JSON_SAMPLE, TOKEN, CliProcess, eventually, service_env

ROOT = Path(__file__).parent.parent


async def table_columns(db: asyncpg.Pool, table: str) -> list[str]:
    rows = await db.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'flowscribe' AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return [r[0] for r in rows]


class TestSchema:
    """Every payload field has its column, named in snake_case, in the Struct's order."""

    async def test_child_tables_match_the_structs(self, db):
        assert set(CHILD_COLUMNS) == {table for table, _ in CHILD_TABLES.values()}
        for table, (_, columns) in CHILD_COLUMNS.items():
            assert await table_columns(db, table) == columns

    async def test_ledger_and_analyses_columns_exist(self, db):
        assert set(CALLBACK_COLUMNS) <= set(await table_columns(db, "callbacks"))
        assert set(ANALYSIS_COLUMNS) == set(await table_columns(db, "analyses"))

    async def test_migrate_is_idempotent(self, database_url):
        from store.migrations import migrate

        assert await migrate(database_url) == []

    async def test_large_values_are_compressed_with_lz4_where_the_server_has_it(self, db):
        # pglz on the archived body was half the cost of a COPY batch (bench/).
        has_lz4 = await db.fetchval(
            "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        methods = dict(await db.fetch(
            """SELECT attrelid::regclass::text || '.' || attname, attcompression::text FROM pg_attribute
               WHERE (attrelid, attname) IN (('flowscribe.callbacks'::regclass, 'body'),
                                             ('flowscribe.analyses'::regclass, 'conversation_text'))"""))
        expected = "l" if has_lz4 else ""
        assert methods == {"flowscribe.callbacks.body": expected,
                           "flowscribe.analyses.conversation_text": expected}


class TestSettingsAreDocumented:
    """The README's configuration table lists exactly the settings the code reads."""

    def test_every_variable_is_in_the_readme(self):
        readme = (ROOT / "README.md").read_text()
        documented = set(re.findall(r"^\| `(FLOWSCRIBE_[A-Z_]+)` \|", readme, re.MULTILINE))
        read = {f.metadata["env"] for f in dataclasses.fields(Settings)}
        assert documented == read

    def test_bad_values_are_refused_with_the_variable_named(self):
        import pytest

        from runtime.settings import SettingsError

        with pytest.raises(SettingsError, match="FLOWSCRIBE_WORKER_BATCH_SIZE"):
            Settings.from_env({"FLOWSCRIBE_WORKER_BATCH_SIZE": "0"})
        secret = Settings.from_env({"FLOWSCRIBE_CALLBACK_TOKENS": "a, b,,c"})
        assert tuple(secret.callback_tokens) == ("a", "b", "c")
        assert "a" not in repr(secret.callback_tokens)

    def test_public_settings_hide_secrets(self):
        shown = Settings.from_env({"FLOWSCRIBE_CALLBACK_TOKENS": "s3cret-token",
                                   "FLOWSCRIBE_AMQP_URL": "amqp://u:hunter2@mq/"}).public()
        assert "s3cret-token" not in repr(shown) and "hunter2" not in repr(shown)


class TestCompose:
    """compose.yaml (which cannot run here) is well-formed and runs real entry points."""

    def test_services_and_commands(self):
        compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
        services = compose["services"]
        assert {"rabbitmq", "postgres", "migrate", "gateway", "worker"} <= set(services)
        for name in ("migrate", "gateway", "worker"):
            command = services[name]["command"]
            assert command[0] in COMMANDS, name
            assert services[name]["image"] == "flowscribe-ingest:latest"
        assert services["worker"]["deploy"]["replicas"] >= 1
        assert services["gateway"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        for name in ("rabbitmq", "postgres", "gateway"):
            assert "healthcheck" in services[name], name

    def test_health_checks_ordering_and_scaling(self):
        """Long-running services are health-checked; app services wait for healthy dependencies; workers scale."""
        services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
        for name, service in services.items():
            if "build" in service:  # ours: a real entry point, whatever the service's name
                assert service["command"][0] in COMMANDS, name
            if service.get("restart") != "no":  # the one-shot `migrate` is judged by its exit status
                assert service["healthcheck"]["test"], name
        for name in ("gateway", "worker"):
            for dependency in ("rabbitmq", "postgres"):
                assert services[name]["depends_on"][dependency]["condition"] == "service_healthy", name
        for name, port_setting in (("gateway", "FLOWSCRIBE_GATEWAY_PORT"), ("worker", "FLOWSCRIBE_WORKER_HTTP_PORT")):
            port = services[name]["environment"][port_setting]
            assert f"http://127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
        worker = services["worker"]
        assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` must work

    def test_dockerfile_entrypoint_is_the_console_script(self):
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert 'ENTRYPOINT ["flowscribe-ingest"]' in dockerfile
        pyproject = (ROOT / "pyproject.toml").read_text()
        assert 'flowscribe-ingest = "flowscribe_ingest.cli:main"' in pyproject


class TestGatewayProcess:
    """The gateway command serves, logs without the token, and stops cleanly on SIGTERM."""

    async def test_serve_and_stop(self, settings, http):
        gateway = await CliProcess.start("gateway", service_env(settings))
        try:
            base = f"http://127.0.0.1:{(await gateway.event('gateway listening'))['port']}"
            for token in (TOKEN, "wrong-token"):
                async with http.post(f"{base}/flowscribe/callback/{token}", data=b"{}",
                                     headers={"Content-Type": "application/json"}) as r:
                    assert r.status in (202, 401)
        finally:
            code = await gateway.stop()
        assert code == 0
        output = gateway.output
        assert TOKEN not in output and "wrong-token" not in output
        assert "/flowscribe/callback/<redacted>" in output
        assert '"event": "gateway stopped"' in output


class TestGatewayProcesses:
    """FLOWSCRIBE_GATEWAY_PROCESSES=N: N processes on one port, one /metrics, one graceful stop."""

    CALLBACKS = 24

    async def _started(self, settings) -> tuple[CliProcess, str, list[int]]:
        gateway = await CliProcess.start("gateway", service_env(settings, FLOWSCRIBE_GATEWAY_PROCESSES="2"))
        try:
            started = await gateway.event("gateway processes started")
            assert started["processes"] == 2 and len(started["pids"]) == 2

            async def listening_pids() -> set[int] | None:
                pids = {e["pid"] for e in gateway.events() if e.get("event") == "gateway listening"}
                return pids if len(pids) == 2 else None

            assert await eventually(listening_pids) == set(started["pids"])
        except BaseException:
            await gateway.stop()
            raise
        return gateway, f"http://127.0.0.1:{started['port']}", started["pids"]

    async def test_processes_share_the_port_metrics_add_up_and_sigterm_stops_all(self, settings, broker):
        gateway, base, pids = await self._started(settings)
        try:
            for _ in range(self.CALLBACKS):
                # A connection each, so that the kernel spreads them over both processes.
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{base}/flowscribe/callback/{TOKEN}", data=JSON_SAMPLE,
                                            headers={"Content-Type": "application/json"}) as r:
                        assert r.status == 202, await r.text()
            served = {e["pid"] for e in gateway.events() if e.get("event") == "callback accepted"}
            assert served == set(pids)  # both took callbacks
            for _ in range(6):  # whichever process answers, the sum of both
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{base}/metrics") as r:
                        text = await r.text()
                assert f'flowscribe_callbacks_received_total{{status="202"}} {float(self.CALLBACKS)}' in text
            queue = await broker.declare_queue(topology.CALLBACK_QUEUE, passive=True)
            assert queue.declaration_result.message_count == self.CALLBACKS
        finally:
            code = await gateway.stop()
        assert code == 0
        exited = [e for e in gateway.events() if e.get("event") == "gateway process exited"]
        assert sorted(e["pid"] for e in exited) == sorted(pids) and {e["exit_code"] for e in exited} == {0}
        assert [e for e in gateway.events() if e.get("event") == "gateway stopped"][-1]["processes"] == 2

    async def test_a_process_that_dies_stops_the_others_and_the_exit_status_says_so(self, settings):
        gateway, _, pids = await self._started(settings)
        try:
            os.kill(pids[0], signal.SIGKILL)
            assert await asyncio.wait_for(gateway.process.wait(), 30) == 1
        finally:
            await gateway.stop()
        unexpected = "gateway process exited unexpectedly; stopping the others"
        died = [e for e in gateway.events() if e.get("event") == unexpected]
        assert [(e["pid"], e["exit_code"]) for e in died] == [(pids[0], -signal.SIGKILL)]
        others = [e for e in gateway.events() if e.get("event") == "gateway process exited"]
        assert [(e["pid"], e["exit_code"]) for e in others] == [(pids[1], 0)]
