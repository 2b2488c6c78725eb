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
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S_VERSION = "1.32.0"  # the kubectl on these machines; kubernetes-validate bundles its schemas
APP_ROLE = "enclave_app"  # infra/postgres-roles.sql: reads the catalog, INSERTs and SELECTs audit rows
MIGRATE = ["enclave", "db", "upgrade", "--app-role", APP_ROLE]


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


def _one(rendered: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in rendered if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def _secret_keys(container: dict[str, Any]) -> dict[str, str]:
    """Environment variable -> the key of the Secret it comes from."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def _assert_restricted(pod: dict[str, Any]) -> None:
    """The "restricted" Pod Security Standard, as the namespace enforces it, for one pod spec."""
    assert not [k for k in ("hostNetwork", "hostPID", "hostIPC", "hostUsers") if pod.get(k)]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volumes, volume["name"]
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0
        assert not [p for p in container.get("ports", []) if "hostPort" in p]


def test_kustomize_base_renders_resources_valid_for_kubernetes(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment",
                            "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                            "Job", "NetworkPolicy"])
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
    _assert_restricted(pod)
    for container in pod["containers"]:
        assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(container)


def test_migration_job_runs_db_upgrade_as_the_owner_under_the_restricted_standard(
        rendered: list[dict[str, Any]]) -> None:
    job = _one(rendered, "Job")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["metadata"]["namespace"] == _one(rendered, "Namespace")["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    _assert_restricted(pod)
    assert pod["restartPolicy"] in {"Never", "OnFailure"} and job["spec"]["backoffLimit"] >= 1
    (container,) = pod["containers"]
    assert container["command"] == MIGRATE
    query = _one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == query["image"], "the migration must be the code the service runs"
    # The owner's credential and nothing else: no envFrom, no other secret, no plain value.
    assert "envFrom" not in container and not [e for e in container["env"] if "value" in e]
    assert _secret_keys(container) == {"ENCLAVE_DATABASE_URL": "owner-database-url"}


def test_query_pods_connect_with_the_app_role_key_never_the_owners(rendered: list[dict[str, Any]]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in pod, "migrations run in the Job, once, not in every query pod"
    (container,) = pod["containers"]
    keys = _secret_keys(container)
    owner_key = _secret_keys(_one(rendered, "Job")["spec"]["template"]["spec"]["containers"][0])
    assert keys["ENCLAVE_DATABASE_URL"] == "app-database-url" != owner_key["ENCLAVE_DATABASE_URL"]
    assert owner_key["ENCLAVE_DATABASE_URL"] not in keys.values()
    assert "ENCLAVE_AUDIT_DATABASE_URL" not in keys, "the audit log is reached with the same app role"
    assert _one(rendered, "ConfigMap")["data"]["ENCLAVE_AUDIT_APP_ROLE"] == APP_ROLE


def test_secrets_are_referenced_never_written_into_the_base(rendered: list[dict[str, Any]]) -> None:
    assert not [d for d in rendered if d["kind"] == "Secret"]
    container = _one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    secret_env = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"ENCLAVE_DATABASE_URL", "ENCLAVE_TENANT_KEY", "ENCLAVE_JWT_KEY", "ENCLAVE_LLM_API_KEY"} <= secret_env
    assert not [e for e in container["env"] if "value" in e]
    config = _one(rendered, "ConfigMap")["data"]
    assert not [k for k in config if re.search(r"KEY|PASSWORD|SECRET|DATABASE_URL", k)]


def test_network_policy_allows_egress_only_to_database_model_server_and_dns(rendered: list[dict[str, Any]]) -> None:
    spec = _one(rendered, "NetworkPolicy", "enclave-query")["spec"]
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


def test_migration_pods_reach_only_the_database_and_dns_and_take_no_calls(
        rendered: list[dict[str, Any]]) -> None:
    job_labels = _one(rendered, "Job")["spec"]["template"]["metadata"]["labels"]
    (spec,) = [p["spec"] for p in rendered if p["kind"] == "NetworkPolicy"
               and p["spec"]["podSelector"]["matchLabels"].items() <= job_labels.items()]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and not spec.get("ingress")
    ports = set()
    for rule in spec["egress"]:
        assert rule.get("to") and not [peer for peer in rule["to"] if "ipBlock" in peer]
        ports |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert ports == {("TCP", 5432), ("UDP", 53), ("TCP", 53)}
    query_labels = _one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not spec["podSelector"]["matchLabels"].items() <= query_labels.items()


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


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """compose.env.example as compose reads it (comments and blank lines skipped)."""
    lines = (INFRA / "compose.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _container_env(service: dict[str, Any], env_file: dict[str, str]) -> dict[str, str]:
    """The environment a service's container gets from `docker compose --env-file infra/compose.env`:
    the env file if it names it, then its `environment`, interpolated from that same file."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if env_file.get(name):
            return env_file[name]
        assert op != ":?", f"compose refuses to start without {name}: {arg}"
        return arg or ""

    env = dict(env_file) if service.get("env_file") == "compose.env" else {}
    env.update({k: _INTERPOLATION.sub(value, str(v)) for k, v in (service.get("environment") or {}).items()})
    return env


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_compose_runs_every_part_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "rabbitmq", "migrate", "dagster-code", "dagster-webserver",
                             "dagster-daemon", "celery-worker", "query", "vllm"}
    for name, service in services.items():
        assert _one_shot(service) or ("healthcheck" in service and service["healthcheck"]["test"]), name
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if _one_shot(services[dependency]) else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} on {dependency}"
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
    example = (INFRA / "compose.env.example").read_text()
    for name, service in compose["services"].items():
        # The whole file, or (the query service) only named variables interpolated from it.
        assert service.get("env_file") == "compose.env" or name == "query", name
        for key, value in (service.get("environment") or {}).items():
            assert "@" not in str(value), f"{name}: {key} looks like a URL with credentials"
            if re.search(r"PASSWORD|SECRET|TENANT_KEY|JWT_KEY|API_KEY|VAULT_KEY|TOKEN|DATABASE_URL", key):
                match = re.fullmatch(_INTERPOLATION, str(value))
                assert match, f"{name} sets {key} inline"
                assert re.search(rf"^#? ?{match.group(1)}=", example, re.M), f"{match.group(1)} is not documented"
    assert "change-me" not in text
    for variable in ("POSTGRES_PASSWORD", "ENCLAVE_DATABASE_URL", "ENCLAVE_APP_DATABASE_URL", "ENCLAVE_TENANT_KEY",
                     "ENCLAVE_JWT_KEY", "DAGSTER_PG_PASSWORD", "DAGSTER_CELERY_BROKER_URL", "RABBITMQ_DEFAULT_PASS",
                     "VLLM_API_KEY"):
        assert re.search(rf"^{variable}=", example, re.M), variable
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/compose.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "infra/compose.env must be git-ignored"


def test_compose_migrates_the_schemas_as_the_owner_before_ingestion_and_the_query_service_start(
        compose: dict[str, Any], env_example: dict[str, str]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == MIGRATE
    assert migrate["restart"] == "no" and migrate["image"] == services["query"]["image"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert not migrate.get("ports") and migrate["networks"] == ["enclave"]
    for name in ("query", "dagster-code", "celery-worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    # The migration, and ingestion (which writes the catalog: postgres-roles.sql grants that to the
    # owner only), connect as the schema owner.
    for name in ("migrate", "dagster-code", "celery-worker"):
        url = make_url(_container_env(services[name], env_example)["ENCLAVE_DATABASE_URL"])
        assert url.username == "enclave_owner", name


def test_compose_query_service_holds_the_app_role_credential_and_no_other(
        compose: dict[str, Any], env_example: dict[str, str]) -> None:
    query = compose["services"]["query"]
    assert "env_file" not in query, "the whole env file would hand it the owner's and superuser's passwords"
    assert re.fullmatch(r"\$\{ENCLAVE_APP_DATABASE_URL:\?[^}]+\}", query["environment"]["ENCLAVE_DATABASE_URL"])
    env = _container_env(query, env_example)
    assert make_url(env["ENCLAVE_DATABASE_URL"]).username == APP_ROLE == env["ENCLAVE_AUDIT_APP_ROLE"]
    assert "ENCLAVE_AUDIT_DATABASE_URL" not in env, "the audit log is reached with the same app role"
    owner = make_url(env_example["ENCLAVE_DATABASE_URL"]).username
    assert not [k for k, v in env.items() if owner in v or k in {"ENCLAVE_OWNER_PASSWORD", "POSTGRES_PASSWORD"}]
    assert not {"DAGSTER_PG_PASSWORD", "DAGSTER_CELERY_BROKER_URL", "RABBITMQ_DEFAULT_PASS"} & set(env)
    for secret in ("ENCLAVE_TENANT_KEY", "ENCLAVE_JWT_KEY", "ENCLAVE_LLM_API_KEY"):
        assert env[secret] == env_example[secret], f"the query service must still get {secret}"
    # The role the migration grants is the one the first start creates and the service logs in as.
    init = (INFRA / "postgres-init" / "10-enclave.sh").read_text()
    assert f"CREATE ROLE {APP_ROLE} LOGIN" in init and f"CREATE ROLE {owner} LOGIN" in init


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
    # envSecrets exports each key as a variable of that name: ingestion's Secret has ENCLAVE_* keys,
    # not the query pods' dashed ones (app-database-url), which would reach no setting
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert code["envSecrets"] == launcher["envSecrets"] == [{"name": "enclave-ingest-secrets"}]


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


def test_systemd_units_migrate_as_the_owner_and_serve_as_the_app_role() -> None:
    query = (INFRA / "enclave-query.service").read_text()
    dagster = (INFRA / "enclave-dagster.service").read_text()
    files = [line.partition("=")[2] for line in query.splitlines() if line.startswith("EnvironmentFile=")]
    assert files == ["/etc/enclave/enclave.env", "/etc/enclave/enclave-query.env"]  # the later one overrides
    app_env = dict(line.split("=", 1) for line in (INFRA / "enclave-query.env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert app_env["ENCLAVE_DATABASE_URL"].startswith("postgresql+psycopg://enclave_app@")
    owner_env = (INFRA / "enclave.env").read_text()
    assert "enclave_owner@" in owner_env and "ExecStartPre" not in query
    assert "ExecStartPre=/opt/enclave/.venv/bin/enclave db upgrade --app-role enclave_app" in dagster
    assert "After=" in query and "enclave-dagster.service" in query
