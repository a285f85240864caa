"""Exact multi-facet MIPS against a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.serve.exact import ExactSearcher, exact_search


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1000, 3, 5)).astype(np.float32)
    Q = rng.standard_normal((9, 3, 5)).astype(np.float32)
    ids = rng.permutation(10**6)[:1000].astype(np.int64)
    return emb, Q, ids


def _brute(Q, emb, ids, k, w, exclude=None, removed=None):
    s = np.einsum("bfd,nfd,f->bn", Q.astype(np.float64), emb.astype(np.float64), np.asarray(w, np.float64))
    out = []
    for b in range(Q.shape[0]):
        bad = np.isin(ids, exclude[b]) if exclude is not None else np.zeros(ids.size, bool)
        if removed is not None:
            bad |= removed
        order = [i for i in np.argsort(-s[b], kind="stable") if not bad[i]][:k]
        out.append((ids[order], s[b, order]))
    return out


@pytest.mark.parametrize("chunk", [64, 333, 5000])
def test_equals_brute_force(data, chunk):
    emb, Q, ids = data
    w = (1.0, 0.5, 2.0)
    got_ids, got_s = exact_search(Q, emb, 25, ids, weights=w, chunk=chunk)
    for b, (r_ids, r_s) in enumerate(_brute(Q, emb, ids, 25, w)):
        np.testing.assert_array_equal(got_ids[b], r_ids)
        np.testing.assert_allclose(got_s[b], r_s, rtol=1e-5, atol=1e-5)


def test_exclusion_tombstones_and_padding(data):
    emb, Q, ids = data
    # exclude each query's true top 10 (and an unknown id): they must not come back
    top, _ = exact_search(Q, emb, 10, ids)
    exclude = [list(t) + [-5] for t in top]
    removed = np.zeros(1000, bool)
    removed[::7] = True
    got_ids, _ = exact_search(Q, emb, 30, ids, exclude=exclude, chunk=100, removed=removed)
    for b, (r_ids, _) in enumerate(_brute(Q, emb, ids, 30, (1, 1, 1), exclude, removed)):
        np.testing.assert_array_equal(got_ids[b], r_ids)
        assert not set(got_ids[b]) & set(top[b])
    # asking for more than the catalogue pads with -1 / -inf
    few_ids, few_s = exact_search(Q[:2], emb[:4], 6, ids[:4], exclude=[[ids[0]], []])
    assert (few_ids[0] == -1).sum() == 3 and (few_ids[1] == -1).sum() == 2
    assert np.isneginf(few_s[0, 3:]).all()
    searcher = ExactSearcher(ids, emb)
    np.testing.assert_array_equal(searcher.search(Q, 10)[0], top)


def test_shape_errors(data):
    emb, Q, _ = data
    with pytest.raises(ValueError, match="do not match"):
        exact_search(Q[:, :2], emb, 5)
    with pytest.raises(ValueError, match="weights"):
        exact_search(Q, emb, 5, weights=(1, 2))
