"""Kubernetes deployment: values for the official Apache Airflow chart and the serving manifest.

The chart itself is not available offline, so these check the values against what the chart reads
(key names of chart 1.22) and what the platform needs; rendering with `helm template` is left to CI
systems that can fetch the chart (docs/deployment.md).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / "infra" / "helm"
VALUES = HELM / "values.yaml"
SERVING = HELM / "mfli-serving.yaml"
ROLE_ARN = re.compile(r"^arn:aws:iam::\d{12}:role/[\w+=,.@-]+$")
STORE_URI = "s3://mfli-artifacts/prod"  # the IAM policies' placeholder bucket and prefix

# Top-level keys of the chart's values.yaml that these values may set; a typo would be ignored
# silently by Helm without the chart's JSON schema, so catch it here.
CHART_TOP_LEVEL_KEYS = {
    "images", "airflowVersion", "defaultAirflowTag", "defaultAirflowRepository", "uid", "gid", "executor",
    "dags", "logs", "postgresql", "data", "fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName",
    "redis", "env", "secret", "extraEnv", "extraEnvFrom", "config", "workers", "scheduler", "apiServer",
    "dagProcessor", "triggerer", "createUserJob", "migrateDatabaseJob", "cleanup", "statsd", "pgbouncer",
    "ingress", "networkPolicies", "securityContexts", "nodeSelector", "affinity", "tolerations", "labels",
    "imagePullSecrets", "airflowPodAnnotations", "rbac", "allowPodLaunching", "multiNamespaceMode",
    "podTemplate", "databaseCleanup", "flower", "webserver", "ports", "useStandardNaming",
}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(SERVING.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


def _env(values: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in values["env"]}


def _pyproject_pin(name: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1].split()[0] for d in deps if d.startswith(f"{name}=="))


def test_only_chart_keys(values) -> None:
    assert values.keys() <= CHART_TOP_LEVEL_KEYS, sorted(values.keys() - CHART_TOP_LEVEL_KEYS)


def test_executor_and_airflow_version(values) -> None:
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"] == _pyproject_pin("apache-airflow")
    assert values["redis"]["enabled"] is False, "the chart's Redis is a Celery broker: unused here"


def test_project_image_with_baked_dags(values) -> None:
    image = values["images"]["airflow"]
    assert image["repository"] and "apache/airflow" not in image["repository"]
    assert isinstance(image["tag"], str) and image["tag"] not in {"", "latest"}
    assert values["dags"]["gitSync"]["enabled"] is False
    assert values["dags"]["persistence"]["enabled"] is False
    assert values["config"]["core"]["load_examples"] == "False"


def test_remote_logging_to_s3(values) -> None:
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"].startswith("s3://")
    conn_id = logging["remote_log_conn_id"]
    conn = json.loads(_env(values)[f"AIRFLOW_CONN_{conn_id.upper()}"])
    assert conn["conn_type"] == "aws"
    assert not {"login", "password"} & conn.keys(), "log credentials must come from IRSA, not values"
    assert values["logs"]["persistence"]["enabled"] is False


def test_external_metadata_db_and_secrets_by_reference(values) -> None:
    assert values["postgresql"]["enabled"] is False
    assert values["data"]["metadataSecretName"]
    assert "metadataConnection" not in values["data"], "connection details belong in the secret"
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    assert not values["createUserJob"]["enabled"], "the chart's job needs the admin password in values"
    text = VALUES.read_text()
    for forbidden in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "password:", "fernetKey:", "jwtSecret:"):
        assert forbidden not in text, f"{forbidden} in values.yaml: secrets go in Kubernetes Secrets"


def test_store_and_feast_settings(values) -> None:
    env = _env(values)
    assert env["MFLI_STORE_URI"] == STORE_URI
    assert env["MFLI_FEAST_ENV"] == "prod"
    assert env["MFLI_FEAST_DATA"].startswith(f"{STORE_URI}/")
    secret_env = {s["envName"]: s for s in values["secret"]}
    assert secret_env["MFLI_REDIS"]["secretName"] and secret_env["MFLI_REDIS"]["secretKey"]
    # Feast's SQL registry URL (it holds a password) comes from a secret, never a plain value
    assert "MFLI_FEAST_REGISTRY" not in env
    assert secret_env["MFLI_FEAST_REGISTRY"] == {"envName": "MFLI_FEAST_REGISTRY",
                                                 "secretName": "mfli-feast-registry", "secretKey": "url"}
    # everything feature_store.prod.yaml interpolates is provided, from env or a secret
    prod_yaml = (REPO / "feature_repo" / "feature_store.prod.yaml").read_text()
    for var in set(re.findall(r"\$\{(\w+)\}", prod_yaml)):
        assert var in env or var in secret_env, var


def test_irsa_roles(values) -> None:
    worker_sa = values["workers"]["kubernetes"]["serviceAccount"]
    worker_role = worker_sa["annotations"]["eks.amazonaws.com/role-arn"]
    assert ROLE_ARN.match(worker_role) and worker_sa["create"] is True
    for component in ("apiServer", "triggerer"):
        role = values[component]["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert ROLE_ARN.match(role) and role != worker_role, component


def test_task_pods_are_sized(values) -> None:
    requests = values["workers"]["resources"]["requests"]
    assert float(requests["cpu"]) >= 1 and requests["memory"].endswith("Gi")
    threads = int(_env(values)["OMP_NUM_THREADS"])
    assert threads <= float(requests["cpu"]), "more torch threads than requested cores"


# --- the retrieval service manifest ------------------------------------------------------------


def test_serving_manifest_kinds(manifests) -> None:
    assert {"ServiceAccount", "Deployment", "Service"} <= manifests.keys()
    for doc in manifests.values():
        assert doc["apiVersion"] and doc["metadata"]["name"] == "mfli-serving"


def test_serving_runs_the_project_image_against_the_store(manifests, values) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = values["images"]["airflow"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    argv = container.get("command", []) + container.get("args", [])
    assert argv[argv.index("mfli") + 1] == "serve"
    store_arg = argv[argv.index("--store") + 1]
    env = {e["name"]: e for e in container["env"]}
    assert store_arg == "$(MFLI_STORE_URI)" and env["MFLI_STORE_URI"]["value"] == STORE_URI
    assert env["MFLI_STORE_URI"]["value"] == _env(values)["MFLI_STORE_URI"]
    redis_ref = env["MFLI_REDIS"]["valueFrom"]["secretKeyRef"]
    values_redis = next(s for s in values["secret"] if s["envName"] == "MFLI_REDIS")
    assert (redis_ref["name"], redis_ref["key"]) == (values_redis["secretName"], values_redis["secretKey"])
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & env.keys()


def test_serving_is_read_only(manifests, values) -> None:
    sa = manifests["ServiceAccount"]
    role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert ROLE_ARN.match(role) and "serving" in role
    assert role != values["workers"]["kubernetes"]["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False and sa["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert "Role" not in manifests and "RoleBinding" not in manifests


def test_serving_service_and_probes(manifests) -> None:
    deploy, svc = manifests["Deployment"], manifests["Service"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    argv = container["command"] + container["args"]
    assert str(ports["http"]) == argv[argv.index("--port") + 1]
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()
    # ready = a verified snapshot is loaded; alive = the process answers (a pod without a snapshot is not restarted)
    paths = {p: container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert paths == {"readinessProbe": "/readyz", "livenessProbe": "/livez", "startupProbe": "/livez"}
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and annotations["prometheus.io/port"] == str(ports["http"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MFLI_FEAST_REPO"] == "/opt/airflow/feature_repo"  # else id-only requests never ask Feast
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["MFLI_FEAST_REGISTRY"] == {"name": "mfli-feast-registry", "key": "read-url"}  # SELECT-only role
    assert deploy["spec"]["replicas"] >= 2
