"""What deploy/ and the Dockerfile promise holds: real metrics, real commands, real ports; and scaling out works."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any, ClassVar

import yaml

from console.app import create_app as create_console_app
from flowscribe_ingest.cli import COMMANDS, build_parser
from gateway.app import create_app as create_gateway_app
from runtime.settings import Settings
from schemas import topology
from tests.support import JSON_SAMPLE, eventually
from tests.test_observability import POISON, scrape, value
from tests.test_pipeline import post
from worker import http as worker_http
from worker.metrics import WorkerMetrics

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

SETTING_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}
METRIC = re.compile(r"\b((?:flowscribe|rabbitmq)_[A-Za-z0-9_]+)")
# Series of RabbitMQ's rabbitmq_prometheus plugin with per-queue labels (its
# core metrics collector: queue_coarse_metrics and queue_consumer_count).
RABBITMQ_QUEUE_SERIES = {
    "rabbitmq_queue_messages", "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers", "rabbitmq_queue_process_reductions_total",
}


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "prometheus-alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + [
        target["expr"] for panel in dashboard_panels() for target in panel["targets"]
    ]


def documented_rabbitmq_series() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Monitoring", 1)[1].split("\n#", 1)[0]
    listed = section.split("use these RabbitMQ series", 1)[1].split(".\n", 1)[0]
    return set(re.findall(r"`(rabbitmq_[a-z_]+)`", listed))


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    specs = {name: doc["spec"]["template"]["spec"] for name, doc in of_kind("Deployment").items()}
    specs |= {name: doc["spec"]["template"]["spec"] for name, doc in of_kind("Job").items()}
    specs |= {name: doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] for name, doc in of_kind("CronJob").items()}
    return specs


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def container_settings(container: dict[str, Any]) -> Settings:
    """The settings the container's process would read (ConfigMaps plus literal env values)."""
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ |= of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"]
    environ |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return Settings.from_env(environ)


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def routes(app) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


class TestDashboardAndAlerts:
    """deploy/ parses, and every series it uses exists: ours exported by the processes, RabbitMQ's documented."""

    def test_alert_rules_are_well_formed(self):
        rules = alert_rules()
        assert len({rule["alert"] for rule in rules}) == len(rules) >= 3
        for rule in rules:
            assert rule["expr"].strip() and re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
        used = " ".join(rule["expr"] for rule in rules)
        # The three the issue asks for: dead letters, lag, no consumers.
        assert 'rabbitmq_queue_messages{queue="flowscribe.dead-letter"}' in used
        assert "flowscribe_end_to_end_lag_seconds_bucket" in used
        assert 'rabbitmq_queue_consumers{queue="flowscribe.callbacks"}' in used
        assert topology.DEAD_LETTER_QUEUE == "flowscribe.dead-letter"
        assert topology.CALLBACK_QUEUE == "flowscribe.callbacks"

    def test_dashboard_is_well_formed(self):
        board = dashboard()
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
        variables = {v["name"] for v in board["templating"]["list"]}
        for panel in dashboard_panels():
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"].strip("${}") in variables, panel["title"]
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]

    def test_rabbitmq_series_are_documented_and_real(self):
        used = {name for expr in expressions() for name in METRIC.findall(expr) if name.startswith("rabbitmq_")}
        documented = documented_rabbitmq_series()
        assert used and used <= documented, used - documented
        assert documented <= RABBITMQ_QUEUE_SERIES, documented - RABBITMQ_QUEUE_SERIES

    async def test_our_series_are_exported_after_traffic(self, gateway, http, db, broker, start_worker, caplog):
        caplog.set_level(logging.INFO, logger="worker")
        await post(http, gateway, JSON_SAMPLE)
        await post(http, gateway, POISON)
        running = start_worker()
        worker_metrics = f"http://127.0.0.1:{await running.http_port()}/metrics"

        async def both_done() -> bool:
            samples = await scrape(http, worker_metrics)
            return (value(samples, "flowscribe_messages_consumed_total", outcome="ingested") == 1
                    and value(samples, "flowscribe_messages_consumed_total", outcome="dead_lettered") == 1)

        await eventually(both_done, what="the worker to finish")
        exported = {**await scrape(http, worker_metrics), **await scrape(http, str(gateway.make_url("/metrics")))}
        names = {name for name, _ in exported}
        labels = {label for _, pairs in exported for label, _ in pairs}
        for expr in expressions():
            for name in METRIC.findall(expr):
                if name.startswith("flowscribe_"):
                    assert name in names, f"{name} (in {expr!r}) is not exported"
            if "flowscribe_" in expr:
                used = set(re.findall(r"by \(([^)]*)\)", expr))
                used = {label.strip() for group in used for label in group.split(",")}
                used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
                assert used <= labels | {"le", "vhost", "queue"}, (expr, used - labels)


class TestKubernetesManifests:
    """deploy/k8s: known kinds, real subcommands, probes on real endpoints and ports, real settings."""

    KINDS: ClassVar[dict[str, str]] = {
        "Deployment": "apps/v1", "Service": "v1", "Job": "batch/v1", "CronJob": "batch/v1", "ConfigMap": "v1",
        "ScaledObject": "keda.sh/v1alpha1", "TriggerAuthentication": "keda.sh/v1alpha1",
        "PodDisruptionBudget": "policy/v1",
        "Kustomization": "kustomize.config.k8s.io/v1beta1",
    }

    def test_kinds_and_api_versions(self):
        docs = manifests()
        for doc in docs:
            assert self.KINDS.get(doc["kind"]) == doc["apiVersion"], doc["kind"]
            assert doc["kind"] == "Kustomization" or doc["metadata"]["name"].startswith("flowscribe")
        assert set(of_kind("Deployment")) == {"flowscribe-gateway", "flowscribe-worker", "flowscribe-console"}
        assert set(of_kind("Service")) == {"flowscribe-gateway", "flowscribe-console"}
        assert set(of_kind("Job")) == {"flowscribe-migrate"}
        assert set(of_kind("CronJob")) == {"flowscribe-prune"}
        assert set(of_kind("ScaledObject")) == {"flowscribe-worker"}
        (kustomization,) = [doc for doc in docs if doc["kind"] == "Kustomization"]
        assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    def test_containers_run_real_commands_with_real_settings(self):
        readme = (ROOT / "README.md").read_text()
        for name, spec in pod_specs().items():
            for container in containers(spec):
                assert container["image"] == "flowscribe-ingest:latest", name
                args = build_parser().parse_args(container["args"])  # the whole command line parses
                assert container["args"][0] in COMMANDS or hasattr(args, "ops_command"), (name, container["args"])
                names = {e["name"] for e in container.get("env", [])}
                assert names <= SETTING_NAMES, names - SETTING_NAMES
                container_settings(container)  # every value parses
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref:  # the Secret the README tells how to create, with that key
                        assert ref["name"] == "flowscribe" and f"{ref['key']}=" in readme, ref
        for configmap in of_kind("ConfigMap").values():
            assert set(configmap["data"]) <= SETTING_NAMES, set(configmap["data"]) - SETTING_NAMES
        gateway_env = {e["name"] for e in pod_specs()["flowscribe-gateway"]["containers"][0]["env"]}
        assert "FLOWSCRIBE_CALLBACK_TOKENS" in gateway_env and "FLOWSCRIBE_DATABASE_URL" not in gateway_env

    def test_probes_and_scraping_point_at_real_endpoints(self):
        gateway_routes = routes(create_gateway_app(Settings()))
        worker_routes = routes(worker_http.create_app(WorkerMetrics().registry, readiness=None))  # type: ignore[arg-type]
        console_routes = routes(create_console_app(Settings()))
        for name, command, listens, paths in [
            ("flowscribe-gateway", "gateway", lambda s: s.gateway_port, gateway_routes),
            ("flowscribe-worker", "worker", lambda s: s.worker_http_port, worker_routes),
            ("flowscribe-console", "console", lambda s: s.console_port, console_routes),
        ]:
            deployment = of_kind("Deployment")[name]
            spec = deployment["spec"]["template"]["spec"]
            (container,) = [c for c in spec["containers"] if c["args"] == [command]]
            settings = container_settings(container)
            port = listens(settings)
            assert [p["containerPort"] for p in container["ports"]] == [port], name
            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                assert get["path"] in paths, (name, probe)
                assert port_number(container, get["port"]) == port, (name, probe)
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
            if command != "console":  # the console has no metrics of its own
                assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] in paths
            assert spec["terminationGracePeriodSeconds"] > settings.shutdown_timeout, name
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        worker = of_kind("Deployment")["flowscribe-worker"]
        probe = worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert probe["timeoutSeconds"] > worker_http.DATABASE_PROBE_TIMEOUT
        assert "replicas" not in worker["spec"]  # KEDA owns the count

        service = of_kind("Service")["flowscribe-gateway"]
        gateway = of_kind("Deployment")["flowscribe-gateway"]["spec"]["template"]
        assert service["spec"]["selector"].items() <= gateway["metadata"]["labels"].items()
        for port in service["spec"]["ports"]:
            assert port_number(gateway["spec"]["containers"][0], port["targetPort"]) == Settings().gateway_port

    def test_gateways_drain_without_refusing(self):
        """A pause before the drain (endpoints updated first), room for the drain itself, and
        never both gateways disrupted at once (README, "Deploying", says why each is there)."""
        deployment = of_kind("Deployment")["flowscribe-gateway"]
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        settings = container_settings(container)
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and int(command[1]) >= 5
        assert spec["terminationGracePeriodSeconds"] > int(command[1]) + settings.shutdown_timeout
        (budget,) = of_kind("PodDisruptionBudget").values()
        assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
            "labels"].items()
        assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        readme = (ROOT / "README.md").read_text().split("## Deploying", 1)[1].split("\n### ", 1)[0]
        for needed in ("preStop", "terminationGracePeriodSeconds", "PodDisruptionBudget", "/readyz"):
            assert needed in readme, needed

    def test_the_console_is_internal_and_single(self):
        """The console's Service never leaves the cluster, and one replica holds the previews and jobs."""
        service = of_kind("Service")["flowscribe-console"]
        assert service["spec"]["type"] == "ClusterIP" and "externalIPs" not in service["spec"]
        deployment = of_kind("Deployment")["flowscribe-console"]
        assert deployment["spec"]["replicas"] == 1
        template = deployment["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        (container,) = template["spec"]["containers"]
        settings = container_settings(container)
        for port in service["spec"]["ports"]:
            assert port_number(container, port["targetPort"]) == settings.console_port
        assert "FLOWSCRIBE_CONSOLE_TOKENS" in {e["name"] for e in container["env"]}
        assert "NodePort" not in str(of_kind("Service")) and "LoadBalancer" not in str(of_kind("Service"))

    def test_workers_scale_on_the_callbacks_queue(self):
        (scaled,) = of_kind("ScaledObject").values()
        assert scaled["spec"]["scaleTargetRef"]["name"] in of_kind("Deployment")
        assert scaled["spec"]["scaleTargetRef"]["name"] == "flowscribe-worker"
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == topology.CALLBACK_QUEUE
        assert trigger["metadata"]["mode"] == "QueueLength" and int(trigger["metadata"]["value"]) > 0
        auth = of_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
        (secret,) = auth["spec"]["secretTargetRef"]
        assert (secret["parameter"], secret["name"], secret["key"]) == ("host", "flowscribe", "amqp-url")


    def test_the_prune_cronjob_runs_one_at_a_time_and_stops_gracefully(self):
        (cron,) = of_kind("CronJob").values()
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        job = cron["spec"]["jobTemplate"]["spec"]
        (container,) = job["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["args"])
        assert args.command == "prune" and args.older_than and not args.dry_run
        assert job["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


class TestDockerfile:
    """The image installs every package the project declares, and runs the console script."""

    def test_every_package_is_copied(self):
        dockerfile = (ROOT / "Dockerfile").read_text()
        packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
        copied = set(re.findall(r"^COPY (\S+) \./\1$", dockerfile, re.MULTILINE))
        assert set(packages) <= copied, set(packages) - copied
        assert 'ENTRYPOINT ["flowscribe-ingest"]' in dockerfile
        assert re.search(r"^EXPOSE 8080 8081 8090$", dockerfile, re.MULTILINE)


def analysis_body(i: int) -> bytes:
    """The vendor's sample as a distinct analysis and job."""
    sample = json.loads(JSON_SAMPLE)
    sample["ConversationAnalysisModel"]["ID"] = str(uuid.uuid4())
    sample["JobStatus"]["JobID"] = str(uuid.uuid4())
    sample["ConversationAnalysisModel"]["ConversationText"] = f"conversation {i}"
    return json.dumps(sample).encode()


class TestHorizontalScaling:
    """Three worker processes on one stream of callbacks: each takes a share, every callback is stored once."""

    async def test_three_worker_processes(self, settings, gateway, http, db, broker):
        env = {
            **os.environ,
            "FLOWSCRIBE_AMQP_URL": settings.amqp_url, "FLOWSCRIBE_DATABASE_URL": settings.database_url,
            "FLOWSCRIBE_LOG_FORMAT": "json", "FLOWSCRIBE_LOG_LEVEL": "info",
            "FLOWSCRIBE_WORKER_HTTP_HOST": "127.0.0.1", "FLOWSCRIBE_WORKER_HTTP_PORT": "0",
            # Small batches and prefetch: the stream is shared out in many small pieces.
            "FLOWSCRIBE_WORKER_BATCH_SIZE": "10", "FLOWSCRIBE_WORKER_PREFETCH": "10",
        }
        workers = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowscribe_ingest.cli", "worker", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        ) for _ in range(3)]
        lines: list[list[dict[str, Any]]] = [[] for _ in workers]

        async def collect(process: asyncio.subprocess.Process, into: list[dict[str, Any]]) -> None:
            async for line in process.stderr:
                if line.startswith(b"{"):  # a log line (anything else, e.g. a warning, is not ours to parse)
                    into.append(json.loads(line))

        readers = [asyncio.create_task(collect(p, into)) for p, into in zip(workers, lines, strict=True)]
        try:
            async def ports() -> list[int] | None:
                found = [[e["port"] for e in into if e["event"] == "worker http listening"] for into in lines]
                return [p[0] for p in found] if all(found) else None

            worker_ports = await eventually(ports, timeout=30, what="three workers serving HTTP")

            async def consumers() -> bool:
                queue = await broker.declare_queue(topology.CALLBACK_QUEUE, passive=True)
                return queue.declaration_result.consumer_count == 3

            await eventually(consumers, timeout=30, what="three consumers on the queue")

            posted: list[str] = []
            for start in range(0, 300, 25):
                posted += await asyncio.gather(*(post(http, gateway, analysis_body(i))
                                                 for i in range(start, start + 25)))

            async def all_stored() -> bool:
                return await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == 300

            await eventually(all_stored, timeout=60, what="all 300 callbacks stored")
            shares: list[dict[str, Any]] = []
            for port in worker_ports:
                samples = await scrape(http, f"http://127.0.0.1:{port}/metrics")
                shares.append({o: value(samples, "flowscribe_messages_consumed_total", outcome=o)
                               for o in ("ingested", "duplicate", "redelivered", "dead_lettered")})
            for process in workers:
                process.send_signal(signal.SIGTERM)
            assert [await asyncio.wait_for(p.wait(), 30) for p in workers] == [0, 0, 0]
            await asyncio.gather(*readers)
        finally:
            for process in workers:
                if process.returncode is None:
                    process.kill()

        ingested = [share["ingested"] for share in shares]
        assert all(n > 0 for n in ingested), ingested  # each worker took part
        assert sum(ingested) == 300  # and nothing was landed twice
        assert all(share["duplicate"] == share["redelivered"] == share["dead_lettered"] == 0 for share in shares)
        rows = await db.fetch("SELECT id, outcome FROM flowscribe.callbacks")
        assert sorted(str(r["id"]) for r in rows) == sorted(posted)
        assert {r["outcome"] for r in rows} == {"ingested"}
        assert await db.fetchval("SELECT count(*) FROM flowscribe.analyses") == 300
        # The workers' own lines agree: each callback stored by exactly one of them.
        stored = [{e["message_id"] for e in into if e["event"] == "callback stored"} for into in lines]
        assert sum(len(s) for s in stored) == 300 and set().union(*stored) == set(posted)
