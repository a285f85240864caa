"""Two-tower + ANN baselines: FAISS agrees with exact search, exclusion, new-item modes, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.baselines.ann import AnnConfig, AnnIndex, concat_facets, ivf_nlist
from mfli.data.errors import DataError

N, D, Q, K = 3000, 32, 100, 10


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors (like trained item embeddings) and queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, D))
    x = centres[rng.integers(0, 30, N)] + 0.5 * rng.normal(size=(N, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centres[rng.integers(0, 30, Q)] + 0.5 * rng.normal(size=(Q, D))
    ids = np.arange(N, dtype=np.int64) * 7 + 3  # catalogue ids are not positions
    return x.astype(np.float32), q.astype(np.float32), ids


def _recall(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(r)) / len(r) for g, r in zip(got.tolist(), ref.tolist())]))


def test_exact_is_brute_force(data):
    x, q, ids = data
    got, sc = AnnIndex(AnnConfig(kind="exact")).build(x, ids).search(q, K)
    ref = ids[np.argsort(-(q @ x.T), axis=1)[:, :K]]
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(sc, np.sort(q @ x.T, axis=1)[:, ::-1][:, :K], rtol=1e-5)


@pytest.mark.parametrize("kind,params", [("hnsw", {"ef_search": 256}), ("ivf", {})])
def test_faiss_agrees_with_exact_at_high_effort(data, kind, params):
    x, q, ids = data
    ref, _ = AnnIndex(AnnConfig(kind="exact")).build(x, ids).search(q, K)
    index = AnnIndex(AnnConfig(kind=kind, **params)).build(x, ids)
    if kind == "ivf":
        assert index.nlist == ivf_nlist(N) == 76  # min(4 sqrt(3000) = 219, 3000 // 39 = 76)
        index.set_search_params(nprobe=index.nlist // 2)
    got, _ = index.search(q, K)
    assert _recall(got, ref) >= 0.99
    # and the low-effort end of the sweep really is approximate-but-sane
    index.set_search_params(ef_search=10, nprobe=1)
    low, _ = index.search(q, K)
    assert 0.3 < _recall(low, ref) < 1.0


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_exclusion_drops_seen_items_and_refills(data, kind):
    x, q, ids = data
    index = AnnIndex(AnnConfig(kind=kind, ef_search=256, nprobe=76)).build(x, ids)
    full, _ = index.search(q[:5], 3 * K)
    seen = [set(row[: 2 * K].tolist()) | {-5} for row in full]  # includes an id not in the index
    got, sc = index.search(q[:5], K, exclude=seen)
    assert got.shape == (5, K) and (got >= 0).all()
    for row, s, f in zip(got.tolist(), seen, full.tolist()):
        assert not set(row) & s
        assert row == [i for i in f if i not in s][:K]
    assert (np.diff(sc, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_new_items_incremental_vs_rebuild_at_snapshot(data, kind):
    x, q, ids = data
    new_vec = 3.0 * q[:4] / np.linalg.norm(q[:4], axis=1, keepdims=True)  # each the best match of its query
    new_ids = np.array([10**6, 10**6 + 1, 10**6 + 2, 10**6 + 3])

    inc = AnnIndex(AnnConfig(kind=kind, mode="incremental", ef_search=128, nprobe=76)).build(x, ids)
    inc.add(new_vec, new_ids)
    got, _ = inc.search(q[:4], K)
    assert got[:, 0].tolist() == new_ids.tolist()
    assert inc.ntotal == N + 4

    snap = AnnIndex(AnnConfig(kind=kind, mode="rebuild_at_snapshot", ef_search=128, nprobe=76)).build(x, ids)
    snap.add(new_vec, new_ids)
    got, _ = snap.search(q[:4], K)
    assert not set(got.ravel().tolist()) & set(new_ids.tolist())
    assert snap.ntotal == N and snap.pending_ids.tolist() == new_ids.tolist()
    snap.rebuild()
    got, _ = snap.search(q[:4], K)
    assert got[:, 0].tolist() == new_ids.tolist()
    assert snap.ntotal == N + 4 and len(snap.pending_ids) == 0

    with pytest.raises(ValueError, match="already in the index"):
        inc.add(new_vec[:1], new_ids[:1])


def test_memory_bytes_reflect_structure(data):
    x, _, ids = data
    exact = AnnIndex(AnnConfig(kind="exact")).build(x, ids)
    hnsw = AnnIndex(AnnConfig(kind="hnsw")).build(x, ids)
    ivf = AnnIndex(AnnConfig(kind="ivf")).build(x, ids)
    assert exact.memory_bytes() == N * D * 4 + N * 8
    # HNSW adds at least 2M = 64 level-0 links of 4 bytes per vector
    assert hnsw.memory_bytes() >= exact.memory_bytes() + N * 64 * 4
    assert ivf.memory_bytes() == N * D * 4 + N * 8 + N * 8 + ivf.nlist * D * 4


def test_concat_facets_inner_product_is_sum_over_facets():
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(50, 3, 4)), rng.normal(size=(5, 3, 4))
    w = np.array([1.0, 0.5, 2.0])
    ip = concat_facets(users, w) @ concat_facets(items).T
    ref = np.einsum("bfd,nfd,f->bn", users, items, w)
    np.testing.assert_allclose(ip, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="F, d"):
        concat_facets(items[:, 0])


def test_save_load_round_trip(tmp_path, data):
    x, q, ids = data
    index = AnnIndex(AnnConfig(kind="ivf", mode="rebuild_at_snapshot", nprobe=8)).build(x, ids)
    index.add(x[:2] + 0.01, [-1, -2])
    before = index.search(q, K)
    index.save(tmp_path / "ann")
    back = AnnIndex.load(tmp_path / "ann")
    after = back.search(q, K)
    np.testing.assert_array_equal(after[0], before[0])
    assert back.pending_ids.tolist() == [-1, -2]
    back.rebuild()
    assert back.ntotal == N + 2
    (tmp_path / "ann" / "ids.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="sha256"):
        AnnIndex.load(tmp_path / "ann")


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        AnnIndex(AnnConfig(kind="lsh"))
    index = AnnIndex(AnnConfig(kind="exact")).build(np.eye(4, dtype=np.float32), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones((1, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 4), np.nan, dtype=np.float32), [9])
    got, sc = index.search(np.ones((1, 4), dtype=np.float32), 6)  # more than the index holds
    assert got[0, 4:].tolist() == [-1, -1] and np.isinf(sc[0, 4:]).all()
