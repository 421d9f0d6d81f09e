"""deploy/ read as operators use it: the compose file and the Kubernetes manifests, structurally.

Nothing here runs a container (no engine on this machine). The compose file goes through
``docker-compose config`` (Debian's compose v1: its schema, offline) where installed; the
manifests through the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate`` (offline,
strict); and both gateways' configs through the gateway's own config parser.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from tests.sysdeps import ROOT, binary, missing

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when this was written


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s by kind (one of each), the kustomization apart."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            key = doc["kind"] if doc["kind"] != "ConfigMap" else f"ConfigMap/{doc['metadata']['name']}"
            assert key not in out, f"two {key} in deploy/k8s"
            out[key] = doc
    return out


# -- compose --------------------------------------------------------------------------------------


def test_compose_runs_two_gateways_redis_two_triton_hubs_prometheus_and_grafana():
    services = compose()["services"]
    assert set(services) == {"gateway-1", "gateway-2", "redis", "hub-west", "hub-east", "prometheus", "grafana"}
    for hub in ("hub-west", "hub-east"):
        assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", services[hub]["image"])
        assert "../models/repository:/models:ro" in services[hub]["volumes"]
        assert "--model-repository=/models" in services[hub]["command"]


def test_compose_mounts_only_files_that_exist():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                assert path.exists() or path == (ROOT / "models" / "repository"), f"{name} mounts {source}: missing"


def test_compose_gateway_config_parses_and_names_the_compose_hubs():
    config = parse_config(yaml.safe_load((DEPLOY / "compose" / "railgate.yaml").read_text()))
    services = compose()["services"]
    for hub in config.hubs:
        host = re.sub(r"^\w+://", "", hub.url).split(":")[0]
        assert host in services, f"hub {hub.name} points at {host}, no such service"
    grace = compose()["services"]["gateway-1"]["stop_grace_period"]
    assert float(grace.rstrip("s")) > config.drain_s + config.shutdown_grace_s


def test_compose_prometheus_scrapes_both_gateways_and_grafana_has_the_dashboard():
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    railgate = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "railgate")
    assert railgate["static_configs"][0]["targets"] == ["gateway-1:8080", "gateway-2:8080"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {d["uid"] for d in datasource["datasources"]}
    dashboard = json.loads((DEPLOY / "grafana" / "railgate.json").read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert used <= uids, f"panels name datasources {used - uids} that are not provisioned"


def test_compose_file_passes_docker_compose_config():
    docker_compose = binary("docker-compose", "docker-compose")
    done = subprocess.run([docker_compose, "-f", "compose.yaml", "config", "-q"], cwd=DEPLOY,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# -- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_manifests_hold_every_object_an_operator_expects():
    assert {"Deployment", "Service", "ConfigMap/railgate-config", "Secret", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy"} <= set(manifests())  # fmt: skip


@pytest.mark.parametrize("kind", sorted(manifests()))
def test_manifest_passes_the_kubernetes_schema(kind: str):
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate", "pip install kubernetes-validate (in the dev extras)")
    kubernetes_validate.validate(manifests()[kind], KUBERNETES_VERSION, strict=True)


def test_deployment_probes_drain_and_resources():
    objects = manifests()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {"requests", "limits"} <= set(gateway["resources"])
    config = parse_config(yaml.safe_load(objects["ConfigMap/railgate-config"]["data"]["railgate.yaml"]))
    pre_stop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) == config.drain_s, "the preStop wait matches drain_s"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config.drain_s + config.shutdown_grace_s
    assert config.listen.port == gateway["ports"][0]["containerPort"]


def test_config_and_keys_join_into_one_valid_gateway_config():
    objects = manifests()
    joined = (
        objects["ConfigMap/railgate-config"]["data"]["railgate.yaml"] + objects["Secret"]["stringData"]["keys.yaml"]
    )
    config = parse_config(yaml.safe_load(joined))  # what the init container writes
    assert config.admin_keys and config.tenants
    init = objects["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    assert "/config/railgate.yaml /keys/keys.yaml" in " ".join(init["command"])


def test_selectors_match_the_pods():
    objects = manifests()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": objects["Deployment"]["spec"]["selector"]["matchLabels"],
        "Service": objects["Service"]["spec"]["selector"],
        "PodDisruptionBudget": objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= labels.items(), f"{kind} selects {selector}, the pods carry {labels}"
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] < objects["Deployment"]["spec"]["replicas"]


def test_hpa_scales_on_a_railgate_metric_the_adapter_serves():
    objects = manifests()
    pods = [
        m["pods"]["metric"]["name"]
        for m in objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    adapter = yaml.safe_load(objects["ConfigMap/railgate-prometheus-adapter"]["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    assert pods and all(name.startswith("railgate_") and name in served for name in pods)
    metrics_py = (ROOT / "gateway" / "metrics.py").read_text()
    assert all(f'"{name}"' in metrics_py for name in pods), "the HPA's metric is one the gateway exports"


def test_network_policy_lets_in_clients_and_out_to_hubs_and_dns():
    spec = manifests()["NetworkPolicy"]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ports_out = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
    assert {53, 8000, 8001} <= ports_out
    assert {p["port"] for rule in spec["ingress"] for p in rule["ports"]} == {8080}
