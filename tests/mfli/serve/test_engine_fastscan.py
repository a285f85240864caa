"""Fast-scan lists: the engine's own 4-bit encoder writes the codes faiss's encoder would; score-aware codes."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mfli.serve.engine_fastscan import FastScanLists, anisotropic_codes, pq4_codes


@pytest.mark.parametrize("n_sub", [16, 8])
def test_codes_match_faiss_encoder(n_sub):
    rng = np.random.default_rng(0)
    N, D, C = 600, 16, 12
    emb = rng.standard_normal((N, D)).astype(np.float32)
    entry_rows = rng.permutation(np.concatenate([np.arange(N), rng.choice(N, 200)])).astype(np.int32)
    offsets = np.linspace(0, entry_rows.size, C + 1).astype(np.int64)
    col = np.repeat(np.arange(C), np.diff(offsets))
    cent = np.stack([emb[entry_rows[offsets[c]:offsets[c + 1]]].mean(0) for c in range(C)]).astype(np.float32)
    quantizer = faiss.IndexFlatIP(D)
    quantizer.add(cent)
    ivf = faiss.IndexIVFPQ(quantizer, D, C, n_sub, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.pq.train(np.ascontiguousarray(emb[entry_rows] - cent[col]))
    ivf.is_trained = True
    x = np.ascontiguousarray(emb[entry_rows])
    ids = np.arange(entry_rows.size, dtype=np.int64)
    lists = np.ascontiguousarray(col.astype(np.int64))
    ivf.add_core(x.shape[0], faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    pq = faiss.vector_to_array(ivf.pq.centroids).reshape(n_sub, 16, D // n_sub)
    mine = pq4_codes(emb, entry_rows, offsets, cent, pq)
    assert mine.shape == (entry_rows.size, n_sub // 2)
    for c in range(C):
        n = ivf.invlists.list_size(c)
        theirs = faiss.rev_swig_ptr(ivf.invlists.get_codes(c), n * ivf.code_size).reshape(n, ivf.code_size)
        got_ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(c), n)
        np.testing.assert_array_equal(mine[got_ids], theirs)


def test_search_finds_the_best_entries():
    rng = np.random.default_rng(1)
    N, D, C = 2000, 16, 10
    emb = rng.standard_normal((N, D)).astype(np.float32)
    entry_rows = np.arange(N, dtype=np.int32)
    offsets = np.linspace(0, N, C + 1).astype(np.int64)
    cent = np.stack([emb[offsets[c]:offsets[c + 1]].mean(0) for c in range(C)]).astype(np.float32)
    fs = FastScanLists(emb, entry_rows, offsets, cent, train_size=N)
    assert fs.n_sub == D  # one sub-quantiser per dimension by default
    q = rng.standard_normal((5, D)).astype(np.float32)
    gid = np.tile(np.arange(C, dtype=np.int64), (5, 1))
    got = fs.search(q, gid, q @ cent.T, 50)
    exact = np.argsort(-(q @ emb.T), axis=1)[:, :10]
    assert np.mean([np.isin(exact[i], got[i]).mean() for i in range(5)]) >= 0.9


def test_codes_of_equal_and_tied_centroids_take_the_lower_index():
    pq = np.zeros((2, 16, 1), np.float32)
    pq[0, :, 0] = np.arange(16, dtype=np.float32)[::-1]  # descending: sorted order is reversed
    pq[1, :, 0] = 5.0  # all equal: index 0 wins
    pq[1, 7, 0] = 9.0
    emb = np.array([[3.5, 5.0], [20.0, 8.0], [-4.0, 7.0], [7.2, 9.5]], np.float32)  # 3.5: tie between 3 and 4
    codes = pq4_codes(emb, np.arange(4, dtype=np.int32), np.array([0, 4], np.int64), np.zeros((1, 2), np.float32), pq)
    low, high = codes[:, 0] & 15, codes[:, 0] >> 4
    # sub-quantiser 0: nearest value, ties to the lower index (3.5 is as far from 3 (index 12) as from 4 (index 11))
    np.testing.assert_array_equal(low, [11, 0, 15, 8])
    # sub-quantiser 1: 5.0 at every index but 7 (9.0); 7.0 ties 5.0 and 9.0 -> index 0
    np.testing.assert_array_equal(high, [0, 7, 0, 7])
    # and as a brute-force search says (numpy's argmin takes the first minimum)
    for m, got in ((0, low), (1, high)):
        np.testing.assert_array_equal(got, np.argmin((emb[:, m : m + 1] - pq[m, :, 0][None]) ** 2, axis=1))


def _columns(rng, N=1500, D=16, C=10):
    emb = (rng.standard_normal((N, D)) + 0.8).astype(np.float32)  # off-centre: directions differ from residuals
    entry_rows = rng.permutation(N).astype(np.int32)
    offsets = np.linspace(0, N, C + 1).astype(np.int64)
    cent = np.stack([emb[entry_rows[offsets[c]:offsets[c + 1]]].mean(0) for c in range(C)]).astype(np.float32)
    return emb, entry_rows, offsets, cent


def _losses(emb, entry_rows, offsets, cent, pq, codes, eta):
    """Per entry ``|err|^2 + (eta - 1) (err . e / |e|)^2``, decoded from the packed codes."""
    M = pq.shape[0]
    col = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    sub = np.stack([(codes[:, m >> 1] >> (4 * (m & 1))) & 15 for m in range(M)], axis=1)
    err = emb[entry_rows] - cent[col] - np.concatenate([pq[m, sub[:, m]] for m in range(M)], axis=1)
    unit = emb[entry_rows] / np.linalg.norm(emb[entry_rows], axis=1, keepdims=True)
    return (err ** 2).sum(1) + (eta - 1) * (err * unit).sum(1) ** 2


@pytest.mark.parametrize("n_sub", [16, 8])
def test_anisotropic_codes_never_raise_the_score_aware_loss(n_sub):
    rng = np.random.default_rng(2)
    emb, entry_rows, offsets, cent = _columns(rng)
    pq = (rng.standard_normal((n_sub, 16, 16 // n_sub)) * 0.7).astype(np.float32)
    plain = pq4_codes(emb, entry_rows, offsets, cent, pq)
    aware = plain.copy()
    changed = anisotropic_codes(emb, entry_rows, offsets, cent, pq, aware, 4.0)
    before = _losses(emb, entry_rows, offsets, cent, pq, plain, 4.0)
    after = _losses(emb, entry_rows, offsets, cent, pq, aware, 4.0)
    assert changed > 0 and np.sum(aware != plain) > 0
    assert np.all(after <= before + 1e-4)  # coordinate descent only takes improvements
    assert after.mean() < 0.9 * before.mean()
    # the price: a larger plain reconstruction error (what the nearest-centroid codes minimise)
    assert _losses(emb, entry_rows, offsets, cent, pq, aware, 1.0).mean() > _losses(
        emb, entry_rows, offsets, cent, pq, plain, 1.0).mean()


def test_anisotropic_codes_rank_the_top_items_better():
    """The point of the loss: the pre-ranker's short list keeps more of each query's exact top items."""
    rng = np.random.default_rng(3)
    N, D, C = 4000, 16, 8
    emb, entry_rows, offsets, cent = _columns(rng, N, D, C)
    q = (rng.standard_normal((40, D)) + 0.8).astype(np.float32)
    gid = np.tile(np.arange(C, dtype=np.int64), (q.shape[0], 1))
    exact = np.argsort(-(q @ emb.T), axis=1)[:, :20]

    def short_list_recall(eta):
        fs = FastScanLists(emb, entry_rows, offsets, cent, n_sub=8, train_size=N, eta=eta)
        got = entry_rows[fs.search(q, gid, q @ cent.T, 40)]
        return np.mean([np.isin(exact[i], got[i]).mean() for i in range(q.shape[0])])

    assert short_list_recall(4.0) > short_list_recall(1.0) + 0.03  # 0.82 against 0.74 here


def test_anisotropic_eta_must_be_at_least_one():
    rng = np.random.default_rng(4)
    emb, entry_rows, offsets, cent = _columns(rng, 200, 8, 2)
    with pytest.raises(ValueError, match="eta must be >= 1"):
        FastScanLists(emb, entry_rows, offsets, cent, train_size=200, eta=0.5)


def test_fastscan_settings_round_trip_and_older_configs_keep_their_codes():
    import dataclasses

    from mfli.serve.config import ServingConfig, default_scan_config
    from mfli.serve.engine import EngineConfig

    cfg = ServingConfig(scan=dataclasses.replace(default_scan_config(), fastscan_eta=4.0, fastscan_dims=4))
    back = ServingConfig.from_dict(cfg.to_dict()).scan
    assert (back.fastscan_eta, back.fastscan_dims) == (4.0, 4)
    old = ServingConfig().to_dict()
    del old["scan"]["fastscan_eta"], old["scan"]["fastscan_dims"]  # a serving.json written before the fields
    scan = ServingConfig.from_dict(old).scan
    assert (scan.fastscan_eta, scan.fastscan_dims) == (1.0, 1)  # the codes its gates measured
    assert (EngineConfig().fastscan_eta, EngineConfig().fastscan_dims) == (1.0, 1)
    assert default_scan_config().fastscan_eta > 1.0 and default_scan_config().fastscan_dims == 2
    with pytest.raises(ValueError, match="fastscan_dims"):
        EngineConfig(fastscan_dims=0).validated()


def test_subquantizers_per_dims_fall_back_to_one_per_dimension():
    from mfli.serve.engine_fastscan import subquantizers

    assert subquantizers(None, 128) == 128 and subquantizers(None, 128, 2) == 64
    assert subquantizers(None, 127, 2) == 127  # not a multiple: one per dimension
    assert subquantizers(32, 128, 2) == 32  # an explicit count wins


def test_anisotropic_codes_do_not_depend_on_the_thread_count():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    rng = np.random.default_rng(5)
    emb, entry_rows, offsets, cent = _columns(rng, 3000, 16, 12)
    pq = (rng.standard_normal((8, 16, 2)) * 0.7).astype(np.float32)
    plain = pq4_codes(emb, entry_rows, offsets, cent, pq)
    before = numba.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            codes = plain.copy()
            out.append((anisotropic_codes(emb, entry_rows, offsets, cent, pq, codes, 8.0), codes))
    finally:
        numba.set_num_threads(before)
    assert out[0][0] == out[1][0] > 0
    np.testing.assert_array_equal(out[0][1], out[1][1])
