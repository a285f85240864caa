"""Store URIs and key validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfli.store import InvalidKey, StoreError, open_store, parse_store_uri, validate_key
from mfli.store.local import LocalStore
from mfli.store.uri import join_key, redact, validate_prefix


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "a/../b", "a/..", "/abs/key", "a\\b", "a//b", "a/", "", ".", "a/./b", "C:/x", "a\x00b",
     "x" * 1025],
)
def test_bad_keys_are_refused(key):
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize("key", ["LATEST", "snapshots/s1/model/weights.safetensors", "a..b/c", "d/.hidden",
                                 "deltas/s1/20240101T000000Z.parquet"])
def test_good_keys_pass(key):
    assert validate_key(key) == key


def test_error_message_names_the_problem():
    with pytest.raises(InvalidKey, match=r"'\.\.' segment"):
        validate_key("snapshots/../LATEST")
    with pytest.raises(InvalidKey, match="absolute"):
        validate_key("/etc/passwd")
    with pytest.raises(InvalidKey, match="backslash"):
        validate_key("a\\b")


def test_prefix_and_join():
    assert validate_prefix("") == ""
    assert validate_prefix("snapshots/") == "snapshots/"
    with pytest.raises(InvalidKey):
        validate_prefix("../")
    assert join_key("snapshots", "s1", "manifest.json") == "snapshots/s1/manifest.json"
    with pytest.raises(InvalidKey):
        join_key("snapshots", "..", "x")


def test_parse_uris(tmp_path):
    u = parse_store_uri("s3://my-bucket/some/prefix/")
    assert (u.scheme, u.bucket, u.prefix) == ("s3", "my-bucket", "some/prefix")
    assert str(u) == "s3://my-bucket/some/prefix"
    assert parse_store_uri("s3://my-bucket").prefix == ""
    f = parse_store_uri(f"file://{tmp_path}")
    assert f.scheme == "file" and f.path == tmp_path.resolve()
    rel = parse_store_uri("relative/store")
    assert rel.path == (Path.cwd() / "relative/store").resolve()


@pytest.mark.parametrize("uri", ["s3://ab/x", "s3://Bad_Bucket/x", "gs://bucket/x", "file://relative/x",
                                 "s3://bucket/a/../b", "s3://bucket/x?versionId=1"])
def test_bad_uris(uri):
    with pytest.raises(StoreError):
        parse_store_uri(uri)


def test_credentials_in_uri_are_refused_without_echo():
    with pytest.raises(StoreError) as info:
        parse_store_uri("s3://AKIAEXAMPLE:SuperSecret123@bucket/prefix")
    assert "SuperSecret123" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)


def test_redact():
    assert redact("key=abc secret=xyz123 end", ["xyz123"]) == "key=abc secret=*** end"
    assert redact("http://user:pw@host/x") == "http://***@host/x"


def test_open_store_picks_backend(tmp_path):
    s = open_store(tmp_path / "st")
    assert isinstance(s, LocalStore) and s.uri == (tmp_path / "st").resolve().as_uri()
    assert open_store(s) is s
    assert isinstance(open_store(f"file://{tmp_path}/st2"), LocalStore)
    with pytest.raises(TypeError):
        open_store(str(tmp_path), endpoint_url="http://x")
