"""deploy/k8s-cluster: the base manifests with operator-run RabbitMQ and PostgreSQL clusters, checked structurally."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from runtime.settings import Settings
from runtime.urls import amqp_urls
from tests.test_deploy import K8S, of_kind

CLUSTER = Path(__file__).parent.parent / "deploy" / "k8s-cluster"
README = (Path(__file__).parent.parent / "README.md").read_text()


def documents() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(CLUSTER.glob("*.yaml"))}


def patched_containers() -> list[tuple[str, dict[str, Any]]]:
    """(file, container) of every container the patches change."""
    found = []
    for name, doc in documents().items():
        if name.endswith("-patch.yaml"):
            spec = doc["spec"]["template"]["spec"]
            found += [(name, c) for c in spec.get("initContainers", []) + spec["containers"]]
    return found


class TestClusterOverlay:
    def test_the_overlay_names_every_file_and_builds_on_the_base(self):
        kustomization = documents()["kustomization.yaml"]
        assert "../k8s" in kustomization["resources"]
        listed = set(kustomization["resources"]) | {p["path"] for p in kustomization["patches"]}
        assert listed - {"../k8s"} == {p.name for p in CLUSTER.glob("*.yaml")} - {"kustomization.yaml"}
        base = {doc["metadata"]["name"] for kind in ("Deployment", "Job") for doc in of_kind(kind).values()}
        base_containers = {
            (doc["metadata"]["name"], c["name"])
            for kind in ("Deployment", "Job") for doc in of_kind(kind).values()
            for c in doc["spec"]["template"]["spec"].get("initContainers", [])
            + doc["spec"]["template"]["spec"]["containers"]
        }
        for name, doc in documents().items():
            if name.endswith("-patch.yaml"):
                assert doc["metadata"]["name"] in base, name  # patches something that exists
                spec = doc["spec"]["template"]["spec"]
                for container in spec.get("initContainers", []) + spec["containers"]:
                    assert (doc["metadata"]["name"], container["name"]) in base_containers, (name, container["name"])
        assert K8S.is_dir()

    def test_three_broker_nodes_that_pause_in_a_minority(self):
        rabbitmq = documents()["rabbitmq-cluster.yaml"]
        assert (rabbitmq["apiVersion"], rabbitmq["kind"]) == ("rabbitmq.com/v1beta1", "RabbitmqCluster")
        assert rabbitmq["spec"]["replicas"] == 3
        assert re.search(r"^\s*cluster_partition_handling\s*=\s*pause_minority\s*$",
                         rabbitmq["spec"]["rabbitmq"]["additionalConfig"], re.M)

    def test_three_postgres_instances_replicating_synchronously(self):
        postgres = documents()["postgres-cluster.yaml"]
        assert (postgres["apiVersion"], postgres["kind"]) == ("postgresql.cnpg.io/v1", "Cluster")
        assert postgres["spec"]["instances"] == 3
        assert 1 <= postgres["spec"]["minSyncReplicas"] <= postgres["spec"]["maxSyncReplicas"] < 3
        assert postgres["spec"]["postgresql"]["parameters"]["synchronous_commit"] == "on"

    def test_containers_read_the_secrets_the_operators_create(self):
        rabbitmq = documents()["rabbitmq-cluster.yaml"]["metadata"]["name"]
        postgres = documents()["postgres-cluster.yaml"]["metadata"]["name"]
        # The operators' own Secrets: <name>-default-user (username, password), <name>-app (uri).
        operator_secrets = {(f"{rabbitmq}-default-user", "username"), (f"{rabbitmq}-default-user", "password"),
                            (f"{postgres}-app", "uri")}
        seen = set()
        for name, container in patched_containers():
            defined: dict[str, str] = {}
            for entry in container["env"]:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) in operator_secrets, (name, ref)
                    seen.add((ref["name"], ref["key"]))
                    defined[entry["name"]] = "x"
                    continue
                value = entry["value"]
                for used in re.findall(r"\$\((\w+)\)", value):
                    assert used in defined, f"{name}: $({used}) used before it is defined"
                if entry["name"] == "FLOWSCRIBE_AMQP_URL":
                    assert "valueFrom" in entry and entry["valueFrom"] is None  # the base's reference dropped
                    expanded = re.sub(r"\$\((\w+)\)", "x", value)
                    urls = amqp_urls(expanded)
                    assert len(urls) == 3 and len({u.split("@")[1] for u in urls}) == 3
                    Settings.from_env({"FLOWSCRIBE_AMQP_URL": expanded})
                    order = [e["name"] for e in container["$setElementOrder/env"]]
                    assert order.index("RABBITMQ_PASSWORD") < order.index("FLOWSCRIBE_AMQP_URL"), name
            assert container["env"], name
        assert seen == operator_secrets

    def test_keda_reads_the_cluster_not_one_node(self):
        """Scaling must go on when any one node dies: the management API through the cluster's
        Service, with the operator's credentials; never the one-node `amqp-url`."""
        rabbitmq = documents()["rabbitmq-cluster.yaml"]["metadata"]["name"]
        scaler = documents()["keda-scaler.yaml"]
        assert (scaler["kind"], scaler["metadata"]["name"]) == ("ScaledObject", "flowscribe-worker")
        assert scaler["metadata"]["name"] in of_kind("ScaledObject")
        (trigger,) = scaler["spec"]["triggers"]
        (base_trigger,) = of_kind("ScaledObject")["flowscribe-worker"]["spec"]["triggers"]
        metadata = trigger["metadata"]
        assert metadata["protocol"] == "http"
        host = urllib.parse.urlsplit(metadata["host"])
        assert host.hostname == rabbitmq and host.port == 15672, "the cluster's Service, not a node's pod"
        assert not host.username and not host.password
        for key in ("queueName", "mode", "value"):
            assert metadata[key] == base_trigger["metadata"][key], key
        auth = documents()["keda-auth.yaml"]
        assert auth["metadata"]["name"] == trigger["authenticationRef"]["name"]
        refs = {(r["parameter"], r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
        assert refs == {("username", f"{rabbitmq}-default-user", "username"),
                        ("password", f"{rabbitmq}-default-user", "password")}

    def test_the_readme_explains_it(self):
        section = README.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
        for needed in ("deploy/k8s-cluster", "synchronous", "rabbitmq-queues grow", "pause_minority",
                       "target_session_attrs", "callbacks/s"):
            assert needed in section, needed
