"""Deployment files render and validate offline: kustomize + Kubernetes schemas, compose, Dockerfile,
Dagster's instance file, and the Helm values for Dagster's and vLLM's charts."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S_VERSION = "1.32.0"  # the kubectl on these machines; kubernetes-validate bundles its schemas


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- Kubernetes: the query service's kustomize base ------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders infra/k8s with its built-in kustomize)")
    out = subprocess.run([kubectl, "kustomize", str(INFRA / "k8s")], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _one(rendered: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in rendered if d["kind"] == kind]
    return doc


def test_kustomize_base_renders_resources_valid_for_kubernetes(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment",
                            "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"])
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_misspelt_field(rendered: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(_one(rendered, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_query_pods_meet_the_restricted_pod_security_standard(rendered: list[dict[str, Any]]) -> None:
    assert _one(rendered, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert {"readinessProbe", "livenessProbe"} <= set(container)


def test_secrets_are_referenced_never_written_into_the_base(rendered: list[dict[str, Any]]) -> None:
    assert not [d for d in rendered if d["kind"] == "Secret"]
    container = _one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    secret_env = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"ENCLAVE_DATABASE_URL", "ENCLAVE_TENANT_KEY", "ENCLAVE_JWT_KEY", "ENCLAVE_LLM_API_KEY"} <= secret_env
    assert not [e for e in container["env"] if "value" in e]
    config = _one(rendered, "ConfigMap")["data"]
    assert not [k for k in config if re.search(r"KEY|PASSWORD|SECRET|DATABASE_URL", k)]


def test_network_policy_allows_egress_only_to_database_model_server_and_dns(rendered: list[dict[str, Any]]) -> None:
    spec = _one(rendered, "NetworkPolicy")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["podSelector"]["matchLabels"] == _one(rendered, "Deployment")["spec"]["selector"]["matchLabels"]
    ports = set()
    for rule in spec["egress"]:
        assert rule.get("to"), "an egress rule without 'to' allows every destination"
        assert not [peer for peer in rule["to"] if "ipBlock" in peer]
        ports |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert ports == {("TCP", 5432), ("TCP", 8000), ("UDP", 53), ("TCP", 53)}
    vllm = _load(INFRA / "k8s" / "helm" / "vllm-stack-values.yaml")
    model_rule = next(r for r in spec["egress"] if r["ports"][0]["port"] == 8000)
    wanted = model_rule["to"][0]["podSelector"]["matchLabels"]
    assert wanted.items() <= vllm["routerSpec"]["labels"].items(), "the policy must select the router's pods"


def test_autoscaler_and_disruption_budget_keep_the_service_up(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment")
    hpa, pdb = _one(rendered, "HorizontalPodAutoscaler")["spec"], _one(rendered, "PodDisruptionBudget")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["minReplicas"] >= 2
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["minAvailable"] < hpa["minReplicas"]


# -- compose: one host -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(INFRA / "compose.yaml")


def test_compose_runs_every_part_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "rabbitmq", "dagster-code", "dagster-webserver", "dagster-daemon",
                             "celery-worker", "query", "vllm"}
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and condition == {"condition": "service_healthy"}, name
    assert services["vllm"]["profiles"] == ["gpu"] and "profiles" not in services["query"]
    assert services["celery-worker"]["deploy"]["replicas"] >= 2
    assert services["query"]["command"][:2] == ["enclave", "serve"]


def test_compose_network_has_no_egress_and_the_database_is_never_published(compose: dict[str, Any]) -> None:
    networks, services = compose["networks"], compose["services"]
    assert networks["enclave"]["internal"] is True
    assert networks["edge"]["driver_opts"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    for name, service in services.items():
        assert "enclave" in service["networks"], name
        if "edge" in service["networks"]:
            assert name in {"query", "dagster-webserver"}, name
        for port in service.get("ports", []):
            assert port.startswith("${ENCLAVE_BIND:-127.0.0.1}:"), f"{name} publishes {port} on every interface"
    assert "ports" not in services["postgres"] and "ports" not in services["rabbitmq"]
    assert not [s for s in services.values() if s.get("network_mode") == "host"]


def test_compose_takes_secrets_from_the_env_file_only(compose: dict[str, Any]) -> None:
    text = (INFRA / "compose.yaml").read_text()
    for name, service in compose["services"].items():
        assert service.get("env_file") == "compose.env", name
        for key, value in (service.get("environment") or {}).items():
            assert not re.search(r"PASSWORD|SECRET|TENANT_KEY|JWT_KEY|API_KEY", key), f"{name} sets {key} inline"
            assert "@" not in str(value), f"{name}: {key} looks like a URL with credentials"
    assert "change-me" not in text
    example = (INFRA / "compose.env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "ENCLAVE_DATABASE_URL", "ENCLAVE_TENANT_KEY", "ENCLAVE_JWT_KEY",
                     "DAGSTER_PG_PASSWORD", "DAGSTER_CELERY_BROKER_URL", "RABBITMQ_DEFAULT_PASS", "VLLM_API_KEY"):
        assert re.search(rf"^{variable}=", example, re.M), variable
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/compose.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "infra/compose.env must be git-ignored"


def test_model_server_stays_offline_and_logs_no_prompts(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "1" and vllm["volumes"][0].endswith(":/models:ro")
    assert "--enable-log-requests" not in vllm["command"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_dagster_instance_file_is_valid_for_dagster(monkeypatch: pytest.MonkeyPatch, compose: dict[str, Any]) -> None:
    from dagster._core.instance.config import dagster_instance_config

    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(name, "x")
    config, _ = dagster_instance_config(str(INFRA / "dagster"))
    assert "postgres" in config["storage"] and config["telemetry"]["enabled"] is False
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"  # see the file
    assert config["concurrency"]["pools"]["default_limit"] == 1  # the `gpu` pool of the embedding steps
    (server,) = _load(INFRA / "dagster" / "workspace.yaml")["load_from"]
    code = compose["services"]["dagster-code"]["command"]
    grpc = server["grpc_server"]
    assert grpc["host"] == "dagster-code" and str(grpc["port"]) == code[code.index("-p") + 1]
    celery = _load(INFRA / "dagster" / "celery.yaml")["execution"]["celery"]
    assert celery["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}


# -- the image -----------------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_offline_image_with_cpu_torch_by_default() -> None:
    text = (INFRA / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    user = re.findall(r"^USER\s+(\S+)", final_stage, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert 'pip install --index-url "${TORCH_INDEX}"' in text
    for setting in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "DAGSTER_DISABLE_TELEMETRY=1", "DO_NOT_TRACK=1"):
        assert setting in final_stage
    assert "build-essential" not in final_stage
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "infra/compose.env"} <= set(ignored)


# -- Helm values for the official charts -------------------------------------------------------------


def _at(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def test_dagster_chart_values_run_enclave_code_with_k8s_run_launcher_and_postgres() -> None:
    values = _load(INFRA / "k8s" / "helm" / "dagster-values.yaml")
    # keys as the chart's values.yaml (dagster 1.13) names them
    for path in ("global.postgresqlSecretName", "dagsterWebserver.podSecurityContext",
                 "dagster-user-deployments.deployments.0.dagsterApiGrpcArgs",
                 "runLauncher.config.k8sRunLauncher.envSecrets", "runLauncher.config.k8sRunLauncher.runK8sConfig",
                 "postgresql.postgresqlHost", "dagsterDaemon.runCoordinator.config.queuedRunCoordinator"):
        _at(values, path)
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert values["telemetry"]["enabled"] is False
    assert not any(values[k]["enabled"] for k in ("rabbitmq", "redis", "flower"))
    (code,) = values["dagster-user-deployments"]["deployments"]
    (image,) = _load(INFRA / "k8s" / "kustomization.yaml")["images"]
    assert code["image"]["repository"] == image["newName"] and code["image"]["tag"] == image["newTag"]
    assert code["dagsterApiGrpcArgs"] == ["--module-name", "pipelines.definitions"]
    assert "postgresqlPassword" not in values["postgresql"], "the password comes from the referenced Secret"


def test_vllm_stack_values_serve_a_local_model_offline(rendered: list[dict[str, Any]]) -> None:
    values = _load(INFRA / "k8s" / "helm" / "vllm-stack-values.yaml")
    for path in ("servingEngineSpec.modelSpec.0.modelURL", "servingEngineSpec.modelSpec.0.vllmConfig.maxModelLen",
                 "servingEngineSpec.vllmApiKey.secretName", "routerSpec.routingLogic", "routerSpec.pdb.enabled"):
        _at(values, path)
    (model,) = values["servingEngineSpec"]["modelSpec"]
    assert model["modelURL"].startswith("/"), "a path on the model volume, not a hub id"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in model["env"] and "hf_token" not in model
    served = model["vllmConfig"]["extraArgs"][model["vllmConfig"]["extraArgs"].index("--served-model-name") + 1]
    config = _one(rendered, "ConfigMap")["data"]
    assert config["ENCLAVE_LLM_MODEL"] == served
    assert config["ENCLAVE_LLM_BASE_URL"].startswith("http://vllm-router-service.vllm.svc")
