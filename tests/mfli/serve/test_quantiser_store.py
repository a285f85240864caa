"""The fast-scan quantiser on disk: an engine over the same index and settings encodes with the stored
quantiser (no k-means, same codes and answers); other settings or another index fit their own; bad
files are refused naming the file and the array."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from topic_vectors import rebalanced_index

from mfli.serve.engine import EngineConfig, ScanEngine
from mfli.serve.quantiser_store import FORMAT, StoredQuantiser, load_quantiser, save_quantiser

F, D, L, M, N = 2, 8, 2, 16, 900


def _index(seed: int):
    return rebalanced_index(seed, N, F, D, L, M)


@pytest.fixture(scope="module")
def world():
    index, cb, codes = _index(0)
    cfg = EngineConfig(prerank="fastscan", neighbours=0, n_clusters=6, shortlist=60)
    return index, cb, codes, cfg, ScanEngine(index, cb, cfg, codes=codes)


def _saved(engine, path) -> StoredQuantiser:
    engine.save_quantiser(path)
    return load_quantiser(path)


def _queries(seed: int = 3) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((40, F, D)).astype(np.float32)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def test_stored_quantiser_is_used_instead_of_fitting(world, tmp_path, monkeypatch):
    index, cb, codes, cfg, fitted = world
    stored = _saved(fitted, tmp_path / "q.npz")
    assert fitted.quantiser_source == "fitted" and stored.key == fitted.quantiser_key()
    assert stored.centroids.shape == (F * D, 16, 1)  # one sub-quantiser per dimension by default

    def no_fit(*a, **kw):
        raise AssertionError("a quantiser was fitted although a matching one was given")

    monkeypatch.setattr(faiss.ProductQuantizer, "train", no_fit)
    served = ScanEngine(index, cb, cfg, codes=codes, quantiser=stored)
    assert served.quantiser_source == str(tmp_path / "q.npz")
    np.testing.assert_array_equal(served._fs.quantiser, fitted._fs.quantiser)
    a, b = fitted.search(_queries(), 30), served.search(_queries(), 30)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_the_stored_centroids_are_the_ones_served(world, tmp_path):
    """A quantiser fitted elsewhere (another CPU's last bits) is served as stored, not refitted."""
    index, cb, codes, cfg, fitted = world
    key = fitted.quantiser_key()
    other = fitted._fs.quantiser.copy()
    other[:, :, 0] = np.sort(other[:, :, 0] + np.float32(0.01), axis=1)
    path = save_quantiser(tmp_path / "other.npz", other, key)
    served = ScanEngine(index, cb, cfg, codes=codes, quantiser=load_quantiser(path))
    assert served.quantiser_source == str(path)
    np.testing.assert_array_equal(served._fs.quantiser, other)


@pytest.mark.parametrize("change", ["seed", "subquantizers", "index"])
def test_quantiser_for_other_settings_or_another_index_is_refitted(world, tmp_path, change, caplog):
    index, cb, codes, cfg, fitted = world
    stored = _saved(fitted, tmp_path / "q.npz")
    if change == "index":
        index, cb, codes = _index(1)
    new = EngineConfig(prerank="fastscan", neighbours=0, n_clusters=6, shortlist=60,
                       seed=1 if change == "seed" else 0,
                       fastscan_subquantizers=8 if change == "subquantizers" else None)
    with caplog.at_level("INFO", logger="mfli.serve.engine"):
        engine = ScanEngine(index, cb, new, codes=codes, quantiser=stored)
    assert engine.quantiser_source == "fitted"
    want = {"seed": ["seed"], "subquantizers": ["n_sub"], "index": ["layout"]}[change]
    assert f"({', '.join(want)} differ)" in caplog.text
    fresh = ScanEngine(index, cb, new, codes=codes)
    np.testing.assert_array_equal(engine._fs.quantiser, fresh._fs.quantiser)


def test_engine_without_fastscan_has_no_quantiser_to_save(world, tmp_path):
    index, cb, codes, _, _ = world
    engine = ScanEngine(index, cb, EngineConfig(prerank="codes", neighbours=0), codes=codes)
    assert engine.quantiser_source is None
    with pytest.raises(ValueError, match="no fast-scan quantiser"):
        engine.save_quantiser(tmp_path / "q.npz")


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _key(**kw) -> np.ndarray:
    key = {"format": FORMAT, "n_sub": 4, "train_size": 100, "seed": 0, "layout": "x", **kw}
    return np.frombuffer(json.dumps(key).encode(), np.uint8)


@pytest.mark.parametrize("arrays, message", [
    ({"key": _key()}, "no array 'centroids'"),
    ({"centroids": np.zeros((4, 16, 2), np.float32)}, "no array 'key'"),
    ({"centroids": np.zeros((4, 16, 2), np.float32), "key": np.frombuffer(b"{oops", np.uint8)}, "'key' is not JSON"),
    ({"centroids": np.zeros((4, 16, 2), np.float32), "key": _key(format="other/1")}, "format 'other/1'"),
    ({"centroids": np.zeros((4, 16, 2), np.float64), "key": _key()}, "'centroids' is float64"),
    ({"centroids": np.zeros((3, 16, 2), np.float32), "key": _key()}, r"'centroids' is float32 \(3, 16, 2\)"),
    ({"centroids": np.zeros((4, 8, 2), np.float32), "key": _key()}, r"'centroids' is float32 \(4, 8, 2\)"),
    ({"centroids": np.full((4, 16, 2), np.nan, np.float32), "key": _key()}, "NaN or infinite"),
])
def test_malformed_files_are_refused_naming_the_array(tmp_path, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_quantiser(path)
    assert str(path) in str(err.value)


def test_a_file_that_is_not_npz_is_refused_naming_it(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="cannot be read as npz") as err:
        load_quantiser(path)
    assert str(path) in str(err.value)


def test_a_quantiser_of_the_wrong_shape_is_refused_by_the_lists(world):
    from mfli.serve.engine_fastscan import FastScanLists

    *_, fitted = world
    with pytest.raises(ValueError, match=r"fast-scan quantiser is float32 \(4, 16, 4\)"):
        FastScanLists(fitted._emb, fitted.entry_rows, fitted.offsets, fitted._cent,
                      quantiser=np.zeros((4, 16, 4), np.float32))
