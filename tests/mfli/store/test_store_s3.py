"""S3 backend specifics: retries, error mapping, configuration from the environment, credentials hygiene.

Fast cases use moto or a scripted fake client; the rest run against the SeaweedFS server.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from mfli.store import (
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreError,
    list_snapshots,
    load_snapshot,
    open_store,
    publish_snapshot,
)
from mfli.store.s3 import S3Config, S3Credentials, S3Store

FAST = S3Config(max_attempts=3, botocore_max_attempts=1, backoff_base_s=0.001, backoff_max_s=0.002)


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


class ScriptedClient:
    """Plays back a list of outcomes (exceptions or return values) for put_object / head_object."""

    def __init__(self, put=(), head=(), get=(), listing=()):
        self.put, self.head, self.get, self.listing = list(put), list(head), list(get), list(listing)
        self.calls = []

    def _next(self, script, name, kw):
        self.calls.append((name, kw))
        out = script.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    def put_object(self, **kw):
        return self._next(self.put, "put_object", kw)

    def head_object(self, **kw):
        return self._next(self.head, "head_object", kw)

    def get_object(self, **kw):
        return self._next(self.get, "get_object", kw)

    def list_objects_v2(self, **kw):
        return self._next(self.listing, "list_objects_v2", kw)


def _scripted_store(client) -> S3Store:
    return S3Store("bucket", "pre", client=client, config=FAST, credentials=S3Credentials("AKIDX", "s3cr3t"))


def test_connection_errors_are_retried_with_backoff():
    client = ScriptedClient(put=[EndpointConnectionError(endpoint_url="http://x"),
                                 ConnectionClosedError(endpoint_url="http://x"), {"ETag": '"abc"'}])
    assert _scripted_store(client).put_bytes("k", b"data") == "abc"
    assert [c[0] for c in client.calls] == ["put_object"] * 3
    assert client.calls[0][1]["Key"] == "pre/k"


def test_gives_up_after_max_attempts_with_a_clean_error():
    client = ScriptedClient(put=[EndpointConnectionError(endpoint_url="http://x")] * 3)
    with pytest.raises(StoreError, match=r"S3 put s3://bucket/pre/k: EndpointConnectionError.*after 3 attempts"):
        _scripted_store(client).put_bytes("k", b"data")
    assert len(client.calls) == 3


def test_precondition_failures_are_never_retried():
    client = ScriptedClient(put=[_client_error("PreconditionFailed", 412), {"ETag": '"never"'}])
    with pytest.raises(PreconditionFailed):
        _scripted_store(client).put_bytes("LATEST", b"x", if_match="abc")
    assert len(client.calls) == 1
    assert client.calls[0][1]["IfMatch"] == '"abc"'
    client = ScriptedClient(put=[_client_error("NoSuchKey", 404)])  # AWS: If-Match on a missing key
    with pytest.raises(PreconditionFailed):
        _scripted_store(client).put_bytes("LATEST", b"x", if_match="abc")


def test_conditional_write_whose_answer_was_lost_is_recognised_as_ours():
    """First attempt reaches the server but the connection drops; the retry then sees 412 on our own bytes."""
    ours = base64.b64encode(hashlib.sha256(b"ours").digest()).decode()
    # an opaque etag (not an MD5: SSE-KMS): ownership is decided by the SHA-256 checksum
    client = ScriptedClient(put=[ConnectionClosedError(endpoint_url="http://x"), _client_error("PreconditionFailed", 412)],
                            head=[{"ContentLength": 4, "ETag": '"kms-opaque-1"', "ChecksumSHA256": ours}])
    assert _scripted_store(client).put_bytes("LATEST", b"ours", if_none_match=True) == "kms-opaque-1"
    assert client.calls[0][1]["ChecksumSHA256"] == ours  # the server verifies the bytes it stores
    assert client.calls[-1][1]["ChecksumMode"] == "ENABLED"
    # ... but if someone else's bytes are there, it is a real conflict, even with an MD5-looking etag
    md5 = hashlib.md5(b"ours").hexdigest()
    other = base64.b64encode(hashlib.sha256(b"theirs").digest()).decode()
    client = ScriptedClient(put=[ConnectionClosedError(endpoint_url="http://x"), _client_error("PreconditionFailed", 412)],
                            head=[{"ContentLength": 4, "ETag": f'"{md5}"', "ChecksumSHA256": other}])
    with pytest.raises(PreconditionFailed):
        _scripted_store(client).put_bytes("LATEST", b"ours", if_none_match=True)


def test_error_mapping_and_no_secrets_in_messages():
    store = _scripted_store(ScriptedClient(put=[_client_error("SignatureDoesNotMatch", 403)]))
    with pytest.raises(StoreAuthError) as info:
        store.put_bytes("k", b"x")
    assert "s3cr3t" not in str(info.value) and "AKIDX" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "s3cr3t" not in repr(store) and "AKIDX" not in repr(store)
    assert store.redact("token s3cr3t and AKIDX") == "token *** and ***"
    assert "s3cr3t" not in repr(S3Credentials("AKIDX", "s3cr3t"))


def test_403_on_a_missing_key_reads_as_not_found():
    """AWS with a prefix-limited ListBucket answers 403 for missing keys (infra/iam/README.md)."""
    client = ScriptedClient(get=[_client_error("AccessDenied", 403)], listing=[{"KeyCount": 0}])
    with pytest.raises(ObjectNotFound):
        _scripted_store(client).get_bytes("LATEST")
    assert client.calls[-1] == ("list_objects_v2", {"Bucket": "bucket", "Prefix": "pre/LATEST", "MaxKeys": 1})
    client = ScriptedClient(head=[_client_error("403", 403)], listing=[{"Contents": [{"Key": "pre/LATEST"}]}])
    with pytest.raises(StoreAuthError):  # it exists, so the 403 is real
        _scripted_store(client).head("LATEST")
    client = ScriptedClient(head=[_client_error("403", 403)], listing=[_client_error("AccessDenied", 403)])
    with pytest.raises(StoreAuthError):
        _scripted_store(client).exists("LATEST")


def test_moto_round_trip_and_missing_bucket(monkeypatch):
    from moto import mock_aws

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MFLI_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        store = open_store("s3://moto-bucket/x", region_name="us-east-1", config=FAST)
        with pytest.raises(StoreError, match="bucket 'moto-bucket' does not exist"):
            store.put_bytes("a", b"1")
        store.ensure_bucket()
        etag = store.put_bytes("LATEST", b"1", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            store.put_bytes("LATEST", b"2", if_none_match=True)
        store.put_bytes("LATEST", b"2", if_match=etag)
        assert store.get_bytes("LATEST") == b"2"
        assert [o.key for o in store.list()] == ["LATEST"]
        with pytest.raises(ObjectNotFound):
            store.get_bytes("nope")


# -- against SeaweedFS -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_configuration_from_the_environment_alone(seaweed, monkeypatch, artifacts, tmp_path):
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    store = open_store(f"s3://{seaweed.bucket}/env-only")
    assert store.endpoint_url == seaweed.endpoint_url
    publish_snapshot(store, artifacts, "e1")
    assert load_snapshot(store, cache_dir=tmp_path / "c").name == "e1"


@pytest.mark.slow
def test_wrong_credentials_are_rejected(seaweed, make_s3_store):
    good = make_s3_store()
    good.put_bytes("k", b"v")
    bad = S3Store(seaweed.bucket, good.prefix, endpoint_url=seaweed.endpoint_url, region_name="us-east-1",
                  credentials=S3Credentials(seaweed.access_key, "not-the-secret"), config=FAST)
    with pytest.raises(StoreAuthError, match="credentials refused") as info:
        bad.get_bytes("k")
    assert "not-the-secret" not in str(info.value)
    with pytest.raises(StoreAuthError):
        bad.put_bytes("k2", b"v")
    unknown = S3Store(seaweed.bucket, good.prefix, endpoint_url=seaweed.endpoint_url, region_name="us-east-1",
                      credentials=S3Credentials("nobody", "nothing"), config=FAST)
    with pytest.raises(StoreAuthError):
        unknown.list()
    assert not good.exists("k2")


@pytest.mark.slow
def test_credentials_never_in_logs_or_manifests(seaweed, make_s3_store, artifacts, tmp_path, caplog):
    secret, key_id = seaweed.secret_key, seaweed.access_key
    store = make_s3_store(client=False)  # its own boto3 session, built from the explicit credentials
    caplog.set_level(logging.DEBUG, logger="mfli")
    caplog.set_level(logging.DEBUG)  # botocore included: it logs signed headers, never the secret
    publish_snapshot(store, artifacts, "c1", metrics={"recall@50": 0.3},
                     config={"store": {"aws_secret_access_key": secret, "endpoint": seaweed.endpoint_url},
                             "note": f"ran with {secret}"})
    load_snapshot(store, cache_dir=tmp_path / "c")
    list_snapshots(store)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("missing")
    assert caplog.records, "expected log records"
    everything = caplog.text
    assert secret not in everything
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("mfli"))
    assert "published snapshot c1" in ours and key_id not in ours
    for obj in store.list():
        body = store.get_bytes(obj.key).decode("latin-1")
        assert secret not in body and key_id not in body, obj.key
    manifest = store.get_bytes("snapshots/c1/manifest.json").decode()
    assert '"aws_secret_access_key": "***"' in manifest and '"note": "ran with ***"' in manifest
