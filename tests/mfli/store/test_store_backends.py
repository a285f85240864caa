"""The ObjectStore contract, run on the local backend and on SeaweedFS (real boto3 over HTTP)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from mfli.store import InvalidKey, ObjectNotFound, PreconditionFailed


def test_put_get_head_list_delete(store, tmp_path):
    etag = store.put_bytes("a/b/one.bin", b"hello")
    assert etag == hashlib.md5(b"hello").hexdigest()  # single-part etag == MD5 on both backends
    store.put_bytes("a/two.bin", b"world!")
    store.put_bytes("z.txt", b"z")
    assert store.get_bytes("a/b/one.bin") == b"hello"
    data, e2 = store.get_bytes_etag("a/two.bin")
    assert (data, e2) == (b"world!", store.head("a/two.bin").etag)
    info = store.head("a/b/one.bin")
    assert (info.key, info.size, info.etag) == ("a/b/one.bin", 5, etag)
    assert [o.key for o in store.list("a/")] == ["a/b/one.bin", "a/two.bin"]
    assert [o.key for o in store.list()] == ["a/b/one.bin", "a/two.bin", "z.txt"]
    assert [o.key for o in store.list("a/t")] == ["a/two.bin"]
    assert store.list_dirs("") == ["a"]
    assert store.list_dirs("a/") == ["b"]
    assert store.exists("z.txt") and not store.exists("nope")

    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10_000)
    store.put_file("files/src.bin", src)
    out = store.get_file("files/src.bin", tmp_path / "dl" / "out.bin")
    assert out.read_bytes() == b"x" * 10_000

    store.delete("a/b/one.bin")
    store.delete("a/b/one.bin")  # idempotent
    assert not store.exists("a/b/one.bin")
    assert store.list_dirs("a/") == []  # no phantom empty folder
    assert store.delete_prefix("a/") == 1
    assert [o.key for o in store.list()] == ["files/src.bin", "z.txt"]
    with pytest.raises(ObjectNotFound):
        store.get_bytes("a/two.bin")
    with pytest.raises(ObjectNotFound):
        store.head("a/two.bin")
    with pytest.raises(ObjectNotFound):
        store.get_file("a/two.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


def test_conditional_writes(store):
    e1 = store.put_bytes("LATEST", b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("LATEST", b"v2", if_none_match=True)
    e2 = store.put_bytes("LATEST", b"v2", if_match=e1)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("LATEST", b"v3", if_match=e1)  # stale etag
    with pytest.raises(PreconditionFailed):
        store.put_bytes("missing", b"v3", if_match=e1)
    assert store.get_bytes("LATEST") == b"v2"
    assert store.put_bytes("LATEST", b"v3", if_match=f'"{e2}"')  # quoted etags are accepted too
    with pytest.raises(ValueError):
        store.put_bytes("LATEST", b"x", if_match=e2, if_none_match=True)


def test_conditional_race_exactly_one_wins(store):
    base = store.put_bytes("ptr", b"base")
    n = 6
    barrier = threading.Barrier(n)
    wins, losses = [], []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("ptr", f"writer {i}".encode(), if_match=base)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == n - 1
    assert store.get_bytes("ptr") == f"writer {wins[0]}".encode()


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a//b", "a\\b"])
def test_bad_keys_rejected_before_any_io(store, key):
    for op in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.head(key),
               lambda: store.delete(key)):
        with pytest.raises(InvalidKey):
            op()
    assert store.list() == []


def test_local_store_stays_inside_root(local_store, tmp_path):
    with pytest.raises(InvalidKey):
        local_store.put_bytes(".mfli-store/locks/x", b"x")  # the backend's own folder
    local_store.put_bytes("in/side", b"1")
    assert not (tmp_path / "side").exists()
    assert [o.key for o in local_store.list()] == ["in/side"]  # internals are not listed


@pytest.mark.slow
def test_multipart_upload_and_download(make_s3_store, tmp_path):
    """Objects above the threshold go up in parts (S3's minimum part size is 5 MiB)."""
    from mfli.store.s3 import S3Config

    store = make_s3_store(config=S3Config(multipart_threshold=5 << 20, multipart_chunksize=5 << 20,
                                          max_concurrency=2, max_attempts=2, backoff_base_s=0.01))
    big = tmp_path / "big.bin"
    payload = hashlib.sha256(b"seed").digest() * ((6 << 20) // 32 + 1)
    big.write_bytes(payload)
    etag = store.put_file("big/file.bin", big)
    assert etag.endswith("-2")  # a two-part multipart etag, not an MD5
    info = store.head("big/file.bin")
    assert info.size == len(payload)
    out = store.get_file("big/file.bin", tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()
    store.put_bytes("big/bytes.bin", payload)  # put_bytes above the threshold uses multipart as well
    assert store.head("big/bytes.bin").etag.endswith("-2")
    assert store.get_bytes("big/bytes.bin") == payload
