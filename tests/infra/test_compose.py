"""The Docker Compose deployment (infra/compose/) and the image it runs (Dockerfile, .dockerignore).

No Docker engine is needed: the files are parsed with PyYAML and interpolated with the env file the
docs tell users to pass; `docker compose config` runs too when a Compose v2 client is installed
(it needs no engine) and is skipped otherwise. The MinIO bootstrap script runs against a stub `mc`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "infra" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_FILE = COMPOSE_DIR / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker"]
ONE_SHOT = {"airflow-init", "createbuckets", "feast-apply"}
REQUIRED_SERVICES = {*AIRFLOW_SERVICES, *ONE_SHOT, "postgres", "redis", "minio", "mfli-serving"}
PROJECT_IMAGE_SERVICES = {*AIRFLOW_SERVICES, "airflow-init", "feast-apply", "mfli-serving"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; "$$" is a literal "$".
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"{path.name}:{n}: not KEY=VALUE: {line!r}"
        key, value = line.split("=", 1)
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{n}: bad key {key!r}"
        env[key] = value
    return env


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation, enough for this file (raises on a missing required var)."""

    def sub(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        present = name in env and (env[name] != "" or op not in (":-", ":?"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return interpolate(arg, env)
        if op in (":?", "?"):
            raise KeyError(f"required variable {name} is not set: {arg}")
        return ""

    parts = value.split("$$")
    return "$".join(_VAR.sub(sub, part) for part in parts)


def _resolve(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(x, env) for x in node]
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    return node


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return _parse_env_file(ENV_FILE)


@pytest.fixture(scope="module")
def services(raw, env) -> dict[str, dict]:
    return _resolve(raw["services"], env)


def _environment(svc: dict) -> dict[str, str]:
    envs = svc.get("environment", {})
    if isinstance(envs, list):
        envs = dict(item.split("=", 1) for item in envs)
    return {k: "" if v is None else str(v) for k, v in envs.items()}


def _command(svc: dict) -> str:
    cmd = svc.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


# --- the env file ---------------------------------------------------------------------------------


def test_env_file_defines_every_variable_the_compose_file_needs(raw, env) -> None:
    text = COMPOSE_FILE.read_text().replace("$$", "")
    needed = {m["name"] for m in _VAR.finditer(text) if m["op"] not in (":-", "-")}
    referenced = {m["name"] for m in _VAR.finditer(text)}
    assert needed - env.keys() == set(), "variables without default missing from .env.example"
    assert env.keys() - referenced == set(), ".env.example settings the compose file never uses"


def test_all_services_resolve_with_the_env_file(raw, env) -> None:
    _resolve(raw, env)  # raises KeyError on a ${VAR:?...} that the env file leaves unset
    with pytest.raises(KeyError, match="AIRFLOW__CORE__FERNET_KEY"):
        _resolve(raw, {k: v for k, v in env.items() if k != "AIRFLOW__CORE__FERNET_KEY"})


# --- services, images, commands ----------------------------------------------------------------


def test_required_services_present(services) -> None:
    assert REQUIRED_SERVICES <= services.keys(), sorted(REQUIRED_SERVICES - services.keys())


def test_project_image_is_one_and_the_same(services, env) -> None:
    images = {name: services[name]["image"] for name in PROJECT_IMAGE_SERVICES}
    assert set(images.values()) == {env["MFLI_IMAGE"]}, images
    for name in PROJECT_IMAGE_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} cannot build the project image"
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == REPO and (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_third_party_images_are_pinned(services) -> None:
    for name, svc in services.items():
        if name in PROJECT_IMAGE_SERVICES:
            continue
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
    assert services["minio"]["image"].startswith("minio/minio:")
    assert services["createbuckets"]["image"].startswith("minio/mc:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["postgres"]["image"].startswith("postgres:")


@pytest.mark.parametrize(
    ("service", "command"),
    [("airflow-apiserver", "airflow api-server"), ("airflow-scheduler", "airflow scheduler"),
     ("airflow-dag-processor", "airflow dag-processor"), ("airflow-triggerer", "airflow triggerer"),
     ("airflow-worker", "airflow celery worker")],
)
def test_airflow_component_commands(services, service: str, command: str) -> None:
    assert _command(services[service]) == command


def test_airflow_init_migrates_and_creates_the_admin(services) -> None:
    script = _command(services["airflow-init"])
    assert "airflow db migrate" in script
    assert "airflow users create" in script and "--role Admin" in script
    assert script.index("db migrate") < script.index("users create")


def test_workers_scale(services) -> None:
    worker = services["airflow-worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "container_name" not in worker, "a fixed container name prevents --scale"


# --- Airflow configuration --------------------------------------------------------------------------


def test_airflow_core_settings(services, env) -> None:
    e = _environment(services["airflow-scheduler"])
    user, pw, db = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    assert e["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"postgresql+psycopg2://{user}:{pw}@postgres:5432/{db}"
    assert e["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql://{user}:{pw}@postgres:5432/{db}"
    assert e["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    assert e["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert e["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    assert e["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    # remote logging is wired (off by default) to a bucket MinIO creates and a connection that exists
    assert e["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == f"s3://{env['AIRFLOW_LOGS_BUCKET']}/logs"
    conn_id = e["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
    conn = json.loads(e[f"AIRFLOW_CONN_{conn_id.upper()}"])
    assert conn["conn_type"] == "aws" and conn["extra"]["endpoint_url"] == "http://minio:9000"


def test_shared_secrets_identical_on_every_airflow_container(services) -> None:
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR"):
        values = {name: _environment(services[name]).get(key) for name in [*AIRFLOW_SERVICES, "airflow-init"]}
        assert len(set(values.values())) == 1 and None not in values.values(), (key, values)
        assert next(iter(values.values())), f"{key} is empty"


def test_object_store_credentials_only_where_tasks_run(services, env) -> None:
    bucket, prefix = env["MFLI_S3_BUCKET"], env["MFLI_S3_PREFIX"]
    w = _environment(services["airflow-worker"])
    assert w["MFLI_STORE_URI"] == f"s3://{bucket}/{prefix}"
    assert w["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert w["AWS_ACCESS_KEY_ID"] == env["MFLI_PUBLISHER_ACCESS_KEY"]
    for name in ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-init"]:
        assert "AWS_SECRET_ACCESS_KEY" not in _environment(services[name]), name


def test_feast_production_settings(services, env) -> None:
    bucket, prefix = env["MFLI_S3_BUCKET"], env["MFLI_S3_PREFIX"]
    prod_yaml = REPO / "feature_repo" / "feature_store.prod.yaml"
    assert prod_yaml.is_file()
    for name in ("airflow-worker", "mfli-serving", "feast-apply"):
        e = _environment(services[name])
        assert e["MFLI_FEAST_ENV"] == "prod"
        # the prod yaml's ${...} placeholders must all be provided
        for var in set(re.findall(r"\$\{(\w+)\}", prod_yaml.read_text())):
            assert e.get(var), f"{name}: {var} needed by feature_store.prod.yaml is not set"
        # Feast's SQL registry in the postgres service: the publisher side owns it, the service only reads
        user, pw = ("feast_reader", env["FEAST_READER_PASSWORD"]) if name == "mfli-serving" else (
            env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
        assert e["MFLI_FEAST_REGISTRY"] == f"postgresql+psycopg2://{user}:{pw}@postgres:5432/feast"
        assert e["MFLI_FEAST_DATA"].startswith(f"s3://{bucket}/{prefix}/")
        host, *params = e["MFLI_REDIS"].split(",")
        assert host == "redis:6379"
        opts = dict(p.split("=", 1) for p in params)
        assert opts["password"] == env["REDIS_PASSWORD"]
        assert opts["db"] != "0", "Feast must not share Redis db 0 with the Celery broker"
    assert "feature_store.prod.yaml" in _command(services["feast-apply"])
    for name in ("feast-apply", "mfli-serving"):
        assert "postgres" in services[name]["depends_on"], name


def test_postgres_creates_the_feast_registry_database_and_reader(services, env) -> None:
    pg = services["postgres"]
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in pg["volumes"]
    assert _environment(pg)["FEAST_READER_PASSWORD"] == env["FEAST_READER_PASSWORD"]
    script = (REPO / "infra" / "compose" / "postgres-init" / "10-feast.sh").read_text()
    assert "CREATE DATABASE feast" in script and "CREATE ROLE feast_reader" in script
    assert "GRANT SELECT ON TABLES TO feast_reader" in script
    assert not re.search(r"GRANT (ALL|INSERT|UPDATE|DELETE|CREATE)[^;]*feast_reader", script)
    assert os.access(REPO / "infra" / "compose" / "postgres-init" / "10-feast.sh", os.X_OK)


def test_serving_reads_the_store_with_its_own_read_only_user(services, env) -> None:
    s = services["mfli-serving"]
    cmd = s["command"]
    store = f"s3://{env['MFLI_S3_BUCKET']}/{env['MFLI_S3_PREFIX']}"
    assert cmd[:2] == ["mfli", "serve"] and cmd[cmd.index("--store") + 1] == store
    e = _environment(s)
    assert e["AWS_ACCESS_KEY_ID"] == env["MFLI_SERVING_ACCESS_KEY"] != env["MFLI_PUBLISHER_ACCESS_KEY"]
    assert e["AWS_ENDPOINT_URL"] == "http://minio:9000"
    # id-only requests ask Feast only when the repository is named; the image holds it there
    assert e["MFLI_FEAST_REPO"] == "/opt/airflow/feature_repo"
    assert "COPY --chown=${AIRFLOW_UID}:0 feature_repo/ /opt/airflow/feature_repo/" in (REPO / "Dockerfile").read_text()


def test_store_bucket_and_prefix_match_the_iam_policies(env) -> None:
    """MinIO gets infra/iam/*.json verbatim, so the env file must name the same bucket and prefix."""
    for policy in ("publisher-policy.json", "serving-policy.json"):
        doc = json.loads((REPO / "infra" / "iam" / policy).read_text())
        resources = {r for st in doc["Statement"] for r in ([st["Resource"]] if isinstance(st["Resource"], str)
                                                              else st["Resource"])}
        assert f"arn:aws:s3:::{env['MFLI_S3_BUCKET']}" in resources
        assert all(r == f"arn:aws:s3:::{env['MFLI_S3_BUCKET']}"
                   or r.startswith(f"arn:aws:s3:::{env['MFLI_S3_BUCKET']}/{env['MFLI_S3_PREFIX']}/")
                   for r in resources), resources


# --- healthchecks and start order ----------------------------------------------------------------


def test_long_running_services_have_healthchecks(services) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT or name == "airflow-cli":
            assert svc.get("restart") == "no", f"one-shot {name} must not restart"
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test"), f"{name} has no healthcheck"
        assert svc.get("restart") in {"always", "unless-stopped"}, name
    assert "8080/api/v2/monitor/health" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert "DagProcessorJob" in " ".join(services["airflow-dag-processor"]["healthcheck"]["test"])
    assert "TriggererJob" in " ".join(services["airflow-triggerer"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["airflow-worker"]["healthcheck"]["test"])
    assert "8000/readyz" in " ".join(services["mfli-serving"]["healthcheck"]["test"])


def test_depends_on_conditions(services) -> None:
    conds = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] in conds
            # a dependency must be able to satisfy the condition
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, it has no check"
            if spec["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for long-running {dep} to complete"

    def dep(name: str, on: str) -> str | None:
        return services[name].get("depends_on", {}).get(on, {}).get("condition")

    for name in AIRFLOW_SERVICES:
        assert dep(name, "airflow-init") == "service_completed_successfully", name
        assert dep(name, "postgres") == dep(name, "redis") == "service_healthy", name
    assert dep("airflow-init", "postgres") == "service_healthy"
    assert dep("airflow-worker", "airflow-apiserver") == "service_healthy"
    assert dep("airflow-worker", "createbuckets") == "service_completed_successfully"
    assert dep("createbuckets", "minio") == "service_healthy"
    assert dep("mfli-serving", "createbuckets") == "service_completed_successfully"


def test_depends_on_has_no_cycle(services) -> None:
    graph = {name: set(svc.get("depends_on", {})) for name, svc in services.items()}
    done: set[str] = set()
    while graph.keys() - done:
        ready = {n for n in graph.keys() - done if graph[n] <= done}
        assert ready, f"dependency cycle among {sorted(graph.keys() - done)}"
        done |= ready


# --- MinIO bootstrap ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_createbuckets_script_with_stub_mc(services, env, tmp_path) -> None:
    """Run the one-shot's script against a stub `mc` that records calls and keeps policy files."""
    svc = services["createbuckets"]
    assert svc["entrypoint"] == ["/bin/sh", "-c"]
    script = svc["command"][0]
    stub = tmp_path / "bin" / "mc"
    stub.parent.mkdir()
    stub.write_text(
        '#!/bin/sh\necho "$*" >> "$MC_LOG"\n'
        'if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$MC_OUT/$5.json"; fi\n'
        'if [ "$1 $2 $3" = "admin policy detach" ]; then exit 1; fi\n'  # first run: nothing attached
    )
    stub.chmod(0o755)
    out = tmp_path / "policies"
    out.mkdir()
    run_env = {**_environment(svc), "MFLI_POLICY_DIR": str(REPO / "infra" / "iam"),
               "MC_LOG": str(tmp_path / "calls.log"), "MC_OUT": str(out),
               "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    bucket, logs = env["MFLI_S3_BUCKET"], env["AIRFLOW_LOGS_BUCKET"]
    assert f"mb --ignore-existing local/{bucket}" in calls and f"mb --ignore-existing local/{logs}" in calls
    for policy, user in [("mfli-publisher", env["MFLI_PUBLISHER_ACCESS_KEY"]),
                         ("mfli-serving", env["MFLI_SERVING_ACCESS_KEY"]),
                         ("airflow-logs", env["AIRFLOW_LOGS_ACCESS_KEY"])]:
        assert any(c.startswith(f"admin user add local {user} ") for c in calls), user
        assert f"admin policy attach local {policy} --user {user}" in calls
    # MinIO got the production policies byte for byte, and a valid log policy confined to its bucket
    for name, src in [("mfli-publisher", "publisher-policy.json"), ("mfli-serving", "serving-policy.json")]:
        assert (out / f"{name}.json").read_text() == (REPO / "infra" / "iam" / src).read_text()
    logs_policy = json.loads((out / "airflow-logs.json").read_text())
    resources = {r for st in logs_policy["Statement"] for r in st["Resource"]}
    assert resources == {f"arn:aws:s3:::{logs}", f"arn:aws:s3:::{logs}/logs/*"}


# --- docker compose config (client only, no engine) ---------------------------------------------


def _compose_command() -> list[str] | None:
    candidates = []
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    for cmd in candidates:
        try:
            proc = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        # Compose v2 prints "Docker Compose version v2.x"; v1 cannot parse this file's syntax.
        if proc.returncode == 0 and re.search(r"version v?2\.", proc.stdout):
            return cmd
    return None


@pytest.mark.timeout(300)
def test_docker_compose_config(env) -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose v2 client here (docker compose / docker-compose)")
    # Shell variables override the env file in Compose: drop ours so the result is the file's.
    clean = {k: v for k, v in os.environ.items() if k not in env}
    base = [*cmd, "--env-file", str(ENV_FILE), "-f", str(COMPOSE_FILE)]
    proc = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60, env=clean,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*base, "config", "--services"], capture_output=True, text=True, timeout=60, env=clean,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    default_profile = {n for n, s in raw["services"].items() if not s.get("profiles")}
    assert set(proc.stdout.split()) == default_profile
    # Compose's own interpolation agrees with the one the other tests rely on.
    proc = subprocess.run([*base, "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                          env=clean, check=False)
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)["services"]
    ours = _resolve(raw["services"], env)
    for name in resolved:
        assert {k: str(v) for k, v in resolved[name].get("environment", {}).items()} == _environment(ours[name])


# --- the image ------------------------------------------------------------------------------------


def _pyproject_pin(name: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(name)}==([\w.]+)", dep.split(";")[0].strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE))


def test_dockerfile_pins_match_pyproject() -> None:
    args = _dockerfile_args()
    assert args["TORCH_VERSION"] == _pyproject_pin("torch")
    assert args["AIRFLOW_VERSION"] == _pyproject_pin("apache-airflow")
    assert args["FEAST_VERSION"] == _pyproject_pin("feast")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    for extra in ("celery", "cncf-kubernetes", "postgres", "amazon", "fab"):
        assert extra in args["AIRFLOW_EXTRAS"].split(","), extra


def test_dockerfile_layout() -> None:
    text = DOCKERFILE.read_text()
    args = _dockerfile_args()
    froms = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in text
    assert re.search(r"^COPY .*dags/ /opt/airflow/dags/$", text, flags=re.MULTILINE)
    assert re.search(r"^COPY .*feature_repo/ /opt/airflow/feature_repo/$", text, flags=re.MULTILINE)
    assert "AIRFLOW_HOME=/opt/airflow" in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users and users[-1] == "${AIRFLOW_UID}" and args["AIRFLOW_UID"] == "50000"
    assert not re.search(r"^HEALTHCHECK", text, flags=re.MULTILINE), "healthchecks belong to compose/Kubernetes"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text


def test_build_context_has_what_the_dockerfile_copies() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for must_skip in (".git", ".venv", ".mfli", "tests", "**/.env"):
        assert must_skip in ignored, f".dockerignore should exclude {must_skip}"
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line and "<<" not in line:
            sources += [p for p in line.split()[1:-1] if not p.startswith("--")]
    assert {"pyproject.toml", "README.md", "mfli/", "tasks/", "dags/", "feature_repo/"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
        assert src.rstrip("/") not in ignored, f".dockerignore drops {src}, which the Dockerfile copies"
