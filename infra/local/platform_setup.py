"""Helpers of ``infra/local/platform.sh`` that need Python (boto3, Feast, Celery); not a library.

    platform_setup.py weed-config OUT BUCKET PREFIX      # SeaweedFS s3.config from infra/iam/*.json
    platform_setup.py bucket                             # create the artifact bucket (admin identity)
    platform_setup.py s3-check ROLE                      # a real request as ROLE (publisher | serving)
    platform_setup.py feast-apply DIR                    # copy the Feast repo (prod yaml) and apply it
    platform_setup.py celery-ping N TIMEOUT_S PID...     # wait until N Celery workers answer a ping

Credentials and endpoints come from the environment written by platform.sh (``$STATE/secrets.env``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IAM = ROOT / "infra" / "iam"
#: placeholders used in infra/iam/*.json (see infra/iam/README.md)
IAM_BUCKET, IAM_PREFIX = "mfli-artifacts", "prod"


def _policy(name: str, bucket: str, prefix: str) -> str:
    """The policy file with the placeholder bucket/prefix replaced, as a JSON string."""
    text = (IAM / f"{name}-policy.json").read_text()
    text = text.replace(f"arn:aws:s3:::{IAM_BUCKET}", f"arn:aws:s3:::{bucket}")
    text = text.replace(f"{bucket}/{IAM_PREFIX}/", f"{bucket}/{prefix}/")
    text = text.replace(f'"{IAM_PREFIX}/', f'"{prefix}/')
    return json.dumps(json.loads(text))


def weed_config(out: str, bucket: str, prefix: str) -> None:
    """Identities: ``admin`` (bucket creation only, used by ``up``), ``publisher`` and ``serving`` bound
    to the repository's IAM policies unchanged (SeaweedFS evaluates ``policies`` + ``policyNames``)."""
    env = os.environ

    def ident(name: str, role: str, **extra) -> dict:
        return {"name": name, "credentials": [{"accessKey": env[f"MFLI_S3_{role}_KEY"],
                                               "secretKey": env[f"MFLI_S3_{role}_SECRET"]}], **extra}

    cfg = {
        "identities": [
            ident("admin", "ADMIN", actions=["Admin", "Read", "Write", "List", "Tagging"]),
            ident("publisher", "PUBLISHER", policyNames=["mfli-publisher"]),
            ident("serving", "SERVING", policyNames=["mfli-serving"]),
        ],
        "policies": [
            {"name": "mfli-publisher", "content": _policy("publisher", bucket, prefix)},
            {"name": "mfli-serving", "content": _policy("serving", bucket, prefix)},
        ],
    }
    path = Path(out)
    path.write_text(json.dumps(cfg, indent=2))
    path.chmod(0o600)


def _client(role: str):
    import boto3

    env = os.environ
    return boto3.client("s3", endpoint_url=env["MFLI_S3_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=env[f"MFLI_S3_{role}_KEY"],
                        aws_secret_access_key=env[f"MFLI_S3_{role}_SECRET"])


def bucket() -> None:
    from botocore.exceptions import ClientError

    c = _client("ADMIN")
    name = os.environ["MFLI_S3_BUCKET"]
    try:
        c.head_bucket(Bucket=name)
    except ClientError:
        c.create_bucket(Bucket=name)


def s3_check(role: str) -> None:
    """List under the prefix as the role would (publisher: ``prefix/``; serving: ``prefix/LATEST``)."""
    env = os.environ
    sub = "" if role == "publisher" else "LATEST"
    _client(role.upper()).list_objects_v2(Bucket=env["MFLI_S3_BUCKET"], Prefix=f"{env['MFLI_S3_PREFIX']}/{sub}",
                                          MaxKeys=1)


def feast_apply(dst: str) -> None:
    """The production Feast repo (SQL registry, offline data on S3, Redis online store) under ``dst``."""
    from mfli.features.repo import copy_repo

    repo = copy_repo(dst, data_root=os.environ["MFLI_FEAST_DATA"], env="prod")
    repo.apply()
    print(f"feast: applied {dst} (registry {os.environ['MFLI_FEAST_REGISTRY']})")


def celery_ping(n: int, timeout_s: float, pids: list[int]) -> None:
    """Wait until ``n`` workers answer; give up at once if a worker process (``pids``) has exited."""
    from airflow.providers.celery.executors.celery_executor_utils import app

    deadline = time.monotonic() + timeout_s
    seen: list = []
    while time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                sys.exit(f"celery: worker process {pid} exited")
        seen = app.control.ping(timeout=2.0) or []
        if len(seen) >= n:
            print(f"celery: {len(seen)} workers answered: {sorted(k for d in seen for k in d)}")
            return
        time.sleep(1.0)
    sys.exit(f"celery: {len(seen)} of {n} workers answered within {timeout_s:.0f} s")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "weed-config":
        weed_config(*args)
    elif cmd == "bucket":
        bucket()
    elif cmd == "s3-check":
        s3_check(args[0])
    elif cmd == "feast-apply":
        feast_apply(args[0])
    elif cmd == "celery-ping":
        celery_ping(int(args[0]), float(args[1]), [int(p) for p in args[2:]])
    else:
        sys.exit(f"unknown command {cmd!r}")
