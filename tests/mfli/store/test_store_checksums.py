"""Content checksums come from S3's SHA-256 checksum fields, never from ETags.

moto (fast) and SeaweedFS (slow, a real server) both store ``ChecksumSHA256``; a multipart upload
records the whole object's SHA-256 as metadata next to its composite per-part checksum.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from mfli.store import ObjectNotFound, open_store, publish_snapshot
from mfli.store.s3 import S3Config, sha256_from_head

SMALL_MULTIPART = S3Config(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=1,
                           max_attempts=2, botocore_max_attempts=1, backoff_base_s=0.001, backoff_max_s=0.002)


def _b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_sha256_from_head_fields():
    sha = hashlib.sha256(b"x").hexdigest()
    assert sha256_from_head({"ChecksumSHA256": _b64(b"x")}) == sha
    # a composite multipart checksum is not the object's sha256: use the recorded metadata, else unknown
    assert sha256_from_head({"ChecksumSHA256": _b64(b"x") + "-3", "Metadata": {"sha256": sha}}) == sha
    assert sha256_from_head({"ChecksumSHA256": _b64(b"x") + "-3"}) is None
    assert sha256_from_head({"ChecksumSHA256": _b64(b"x"), "ChecksumType": "COMPOSITE"}) is None
    assert sha256_from_head({"ETag": f'"{hashlib.md5(b"x").hexdigest()}"'}) is None  # an etag is never used
    assert sha256_from_head({"ChecksumSHA256": "not base64!"}) is None


@pytest.fixture
def moto_s3(monkeypatch):
    moto = pytest.importorskip("moto")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MFLI_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    with moto.mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ck-bucket")
        yield


def _check_backend(store, tmp_path):
    data = b"hello checksums"
    store.put_bytes("a/small.bin", data)
    assert store.head("a/small.bin").sha256 == hashlib.sha256(data).hexdigest()
    assert store.content_sha256("a/small.bin") == hashlib.sha256(data).hexdigest()
    f = tmp_path / "file.bin"
    f.write_bytes(b"\x01" * 1000)
    store.put_file("a/file.bin", f)
    assert store.content_sha256("a/file.bin") == hashlib.sha256(f.read_bytes()).hexdigest()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (6 * 4096 + 7))  # > 5 MiB threshold: a 2-part upload
    store.put_file("a/big.bin", big)
    info = store.head("a/big.bin")
    assert info.size == big.stat().st_size
    assert info.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    with pytest.raises(ObjectNotFound):
        store.content_sha256("a/missing.bin")


def test_s3_checksums_on_moto(moto_s3, tmp_path):
    _check_backend(open_store("s3://ck-bucket/pre", config=SMALL_MULTIPART), tmp_path)


def test_local_store_hashes_content(tmp_path):
    store = open_store(str(tmp_path / "store"))
    store.put_bytes("k", b"abc")
    assert store.content_sha256("k") == hashlib.sha256(b"abc").hexdigest()


def test_resumed_publish_skips_only_files_whose_sha256_matches(moto_s3, tmp_path):
    """An object with the right size but other bytes (and any etag) is uploaded again on resume."""
    store = open_store("s3://ck-bucket/pre", config=SMALL_MULTIPART)
    art = tmp_path / "art"
    art.mkdir()
    (art / "a.bin").write_bytes(b"A" * 100)
    (art / "b.bin").write_bytes(b"B" * 100)
    # a crashed earlier attempt left a.bin correct and b.bin with the same size but wrong bytes
    store.put_bytes("snapshots/20240101T0000-abc/a.bin", b"A" * 100)
    store.put_bytes("snapshots/20240101T0000-abc/b.bin", b"X" * 100)
    publish_snapshot(store, art, "20240101T0000-abc", metrics={})
    assert store.get_bytes("snapshots/20240101T0000-abc/b.bin") == b"B" * 100
    assert store.content_sha256("snapshots/20240101T0000-abc/a.bin") == hashlib.sha256(b"A" * 100).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_s3_checksums_on_seaweedfs(make_s3_store, tmp_path):
    """SeaweedFS 4.48 stores and returns ChecksumSHA256 (verified against the same expectations as moto)."""
    _check_backend(make_s3_store(config=SMALL_MULTIPART), tmp_path)
