"""Moving a run's intermediate artifacts through the object store.

Tasks exchange artifact *URIs* (``<store_uri>/runs/<run key>/<name>``) through XCom, never data: a
task downloads what it needs into a scratch directory, works, and uploads its outputs. Any worker
(Celery, Kubernetes) can therefore run any task as long as it reaches the store.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from mfli.store import ObjectStore, open_store


def store_credentials_from_env() -> dict:
    """S3 options for tasks: endpoint/region from ``MFLI_S3_*`` when set (the rest from boto3's chain).

    Deployments that keep credentials in an Airflow connection export them to the worker's environment
    (``AWS_ACCESS_KEY_ID``...) rather than into this code; nothing here reads or logs secrets.
    """
    opts = {}
    if os.environ.get("MFLI_S3_ENDPOINT_URL"):
        opts["endpoint_url"] = os.environ["MFLI_S3_ENDPOINT_URL"]
    if os.environ.get("MFLI_S3_REGION"):
        opts["region_name"] = os.environ["MFLI_S3_REGION"]
    return opts


def open_run_store(store_uri: str) -> ObjectStore:
    return open_store(store_uri, **(store_credentials_from_env() if store_uri.startswith("s3://") else {}))


def split_uri(store_uri: str, uri: str) -> tuple[ObjectStore, str]:
    """``(store, key)`` for an artifact URI under ``store_uri``."""
    root = store_uri.rstrip("/")
    if not uri.startswith(root + "/"):
        raise ValueError(f"artifact {uri!r} is not under the run's store {root!r}")
    return open_run_store(store_uri), uri[len(root) + 1:]


def artifact_uri(run: dict, name: str) -> str:
    return f"{run['work_uri'].rstrip('/')}/{name}"


@contextmanager
def scratch_dir(prefix: str = "mfli-"):
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def put_dir(store_uri: str, uri: str, local: Path) -> str:
    """Upload every file under ``local`` to ``uri/``; returns ``uri``."""
    store, key = split_uri(store_uri, uri)
    for f in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        store.put_file(f"{key}/{f.relative_to(local).as_posix()}", f)
    return uri


def get_dir(store_uri: str, uri: str, local: Path) -> Path:
    """Download every object under ``uri/`` into ``local``; returns ``local``."""
    store, key = split_uri(store_uri, uri)
    objs = store.list(key + "/")
    if not objs:
        raise FileNotFoundError(f"no artifact at {uri}")
    for obj in objs:
        dest = Path(local) / obj.key[len(key) + 1:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(obj.key, dest)
    return Path(local)


def put_json(store_uri: str, uri: str, obj) -> str:
    store, key = split_uri(store_uri, uri)
    store.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
    return uri


def get_json(store_uri: str, uri: str):
    store, key = split_uri(store_uri, uri)
    return json.loads(store.get_bytes(key))


def put_parquet(store_uri: str, uri: str, df: pd.DataFrame) -> str:
    store, key = split_uri(store_uri, uri)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.put_bytes(key, buf.getvalue())
    return uri


def get_parquet(store_uri: str, uri: str) -> pd.DataFrame:
    store, key = split_uri(store_uri, uri)
    return pd.read_parquet(io.BytesIO(store.get_bytes(key)))


def put_npz(store_uri: str, uri: str, arrays: dict[str, np.ndarray]) -> str:
    store, key = split_uri(store_uri, uri)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    store.put_bytes(key, buf.getvalue())
    return uri


def get_npz(store_uri: str, uri: str) -> dict[str, np.ndarray]:
    store, key = split_uri(store_uri, uri)
    with np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run_dataset(run: dict, extracted: dict):
    """The run's extracted tables (interactions, items, users) as a conformed :class:`~mfli.data.dataset.Dataset`."""
    from mfli.data.dataset import Dataset

    s = run["store_uri"]
    return Dataset(
        name="run",
        format="mfli-parquet",
        interactions=get_parquet(s, extracted["interactions_uri"]),
        items=get_parquet(s, extracted["items_uri"]),
        users=get_parquet(s, extracted["users_uri"]),
    ).conformed()
