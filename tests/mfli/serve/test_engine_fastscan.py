"""Fast-scan lists: the engine's own 4-bit encoder writes the codes faiss's encoder would."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mfli.serve.engine_fastscan import FastScanLists, pq4_codes


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
