"""Co-engagement lists: EASE or item-kNN rows learned from events, served without a dense solve per request."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfli.baselines.ease import Ease, EaseConfig
from mfli.index.coengagement import CoEngagement, CoEngagementConfig, build_coengagement


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(300):
        group = u % 3  # three taste groups over items 100-159, so co-engagement is learnable
        items = rng.choice(np.arange(100 + 20 * group, 120 + 20 * group), size=6, replace=False)
        rows += [(u, int(i)) for i in items]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


def test_dense_ease_table_ranks_as_ease(events):
    co = build_coengagement(events, param=50.0)
    assert co.method == "ease" and co.dense is not None and co.param == 50.0
    ease = Ease(EaseConfig(l2=50.0)).fit(events)
    # stored as float16, scaled so the largest weight sits near float16's top
    assert co.dense.dtype == np.float16 and co.nbytes >= co.dense.nbytes == 2 * ease.B.size
    assert 16384 <= np.abs(co.dense.astype(np.float32)).max() <= 32768
    np.testing.assert_allclose(co.dense.astype(np.float32) * co.dense_scale, ease.B,
                               atol=1e-3 * np.abs(ease.B).max())
    hist = [np.array([100, 101, 102]), np.array([145, 150]), np.array([999])]
    ids, sc = co.retrieve(hist, 10)
    ref_ids, ref_sc = ease.retrieve(hist[:2], 10)
    np.testing.assert_allclose(sc[:2], ref_sc, atol=1e-3 * np.abs(ref_sc).max())
    np.testing.assert_array_equal(ids[:2], ref_ids)
    # an unknown history scores nothing: padding, never an arbitrary item
    assert (ids[2] == -1).all() and np.isneginf(sc[2]).all()


def test_sparse_rows_keep_the_largest_positive_weights_best_first(events):
    co = build_coengagement(events, cfg=CoEngagementConfig(neighbours=5, keep_dense_gb=0.0), param=50.0)
    assert co.dense is None and len(co) == events["item_id"].nunique()
    ease = Ease(EaseConfig(l2=50.0)).fit(events)
    for r in range(len(co)):
        w = co.weights[co.indptr[r]:co.indptr[r + 1]]
        cols = co.cols[co.indptr[r]:co.indptr[r + 1]]
        assert 0 < len(w) <= 5 and (w > 0).all() and (np.diff(w) <= 0).all()
        top = np.sort(ease.B[r])[::-1][: len(w)]
        np.testing.assert_allclose(w, top, rtol=1e-6)
        assert r not in cols  # an item never explains itself
    hist = [np.array([100, 101])]
    ids, _ = co.retrieve(hist, 8)
    assert not np.isin(ids[0], hist[0]).any()
    assert np.isin(ids[0][ids[0] >= 0], np.arange(100, 120)).all()  # its own taste group
    ids_all, _ = co.retrieve(hist, 8, exclude=None)
    assert np.isin(hist[0], ids_all[0]).any() or len(ids_all[0][ids_all[0] >= 0]) == 8


def test_itemknn_when_the_dense_solve_does_not_fit(events):
    co = build_coengagement(events, cfg=CoEngagementConfig(max_dense_gb=1e-9, neighbours=10))
    assert co.method == "itemknn" and co.dense is None
    ids, _ = co.retrieve([np.array([140, 141])], 5)
    assert np.isin(ids[0][ids[0] >= 0], np.arange(140, 160)).all()
    with pytest.raises(ValueError, match="method"):
        build_coengagement(events, cfg=CoEngagementConfig(method="svd"))


def test_validation_chooses_the_hyper_parameter(events):
    from mfli.eval.validation import validation_set

    ts = events.assign(event_ts=pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(events)), unit="s"))
    co = build_coengagement(ts, valid=validation_set(ts, seed=0))
    assert co.param in EaseConfig().l2_grid


@pytest.mark.parametrize("keep_dense_gb", [0.5, 0.0])
def test_save_load_round_trip(events, tmp_path, keep_dense_gb):
    co = build_coengagement(events, cfg=CoEngagementConfig(keep_dense_gb=keep_dense_gb), param=50.0)
    back = CoEngagement.load(co.save(tmp_path / "co.npz"))
    assert (back.method, back.param) == (co.method, co.param)
    assert (back.dense is None) == (co.dense is None) and back.dense_scale == co.dense_scale
    hist = [np.array([100, 103]), np.array([150])]
    np.testing.assert_array_equal(back.retrieve(hist, 7)[0], co.retrieve(hist, 7)[0])
    if co.dense is not None:
        np.testing.assert_array_equal(back.dense, co.dense)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz.*missing"):
        CoEngagement.load(tmp_path / "other.npz")


def test_a_float32_table_saved_before_float16_still_loads(events, tmp_path):
    ease = Ease(EaseConfig(l2=50.0)).fit(events)
    co = build_coengagement(events, param=50.0)
    ids = np.asarray(ease.item_ids, np.int64)
    np.savez(tmp_path / "old.npz", item_ids=ids, indptr=np.zeros(len(ids) + 1, np.int64),
             cols=np.zeros(0, np.int32), weights=np.zeros(0, np.float32), meta=np.array(["ease", "50.0"]),
             dense=ease.B.astype(np.float32))
    old = CoEngagement.load(tmp_path / "old.npz")
    assert old.dense.dtype == np.float32 and old.dense_scale == 1.0
    hist = [np.array([100, 101, 102]), np.array([145, 150])]
    np.testing.assert_array_equal(old.retrieve(hist, 10)[0], ease.retrieve(hist, 10)[0])
    np.testing.assert_array_equal(old.retrieve(hist, 10)[0], co.retrieve(hist, 10)[0])


def _numpy_dense(co: CoEngagement, hist, k: int, excl) -> tuple[list, list]:
    """The dense lookup as plain numpy: float32 sums of the widened rows, scaled, excluded, best first
    (ties: lower row)."""
    ids, scores = [], []
    for b, h in enumerate(hist):
        r = co.rows(h)
        if not len(r):
            ids.append([]), scores.append([])
            continue
        s = co.dense[r].astype(np.float32).sum(0, dtype=np.float32) * np.float32(co.dense_scale)
        if excl is not None:
            s[co.rows(excl[b])] = -np.inf
        order = [j for j in np.lexsort((np.arange(s.size), -s)) if np.isfinite(s[j])][:k]
        ids.append(co.item_ids[order].tolist()), scores.append(s[order].tolist())
    return ids, scores


@pytest.mark.parametrize("half", [True, False])
def test_compiled_dense_lookup_equals_numpy(events, half):
    co = build_coengagement(events, param=50.0)
    if not half:  # a float32 table (saved before float16)
        co = CoEngagement(co.item_ids, co.indptr, co.cols, co.weights, co.method, co.param,
                          (co.dense.astype(np.float32) * co.dense_scale).astype(np.float32), 1.0)
    ids_all = co.item_ids
    hist = [np.array([100, 101, 102, 101]),  # a repeat counts once
            np.array([145, -7, 150]),  # an unknown id is ignored
            np.array([], np.int64), [ids_all[0]], list(ids_all[:30])]
    for k, excl in ((10, "history"), (len(ids_all) + 5, "history"), (7, None), (5, [[], [101], [], [], [100]])):
        got_ids, got_sc = co.retrieve(hist, k, exclude=excl)
        want_ids, want_sc = _numpy_dense(co, hist, k, hist if excl == "history" else excl)
        for b in range(len(hist)):
            n = len(want_ids[b])
            np.testing.assert_array_equal(got_ids[b, :n], want_ids[b])
            np.testing.assert_array_equal(got_sc[b, :n], np.asarray(want_sc[b], np.float32))
            assert (got_ids[b, n:] == -1).all() and np.isneginf(got_sc[b, n:]).all()


def test_float16_widening_is_exact_for_every_bit_pattern():
    from mfli.index.coengagement import _add_row

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(bits.view(np.float16))  # the table holds no inf / nan
    acc = np.zeros(bits.size, np.float32)
    _add_row(bits.reshape(1, -1), True, 0, acc, np.empty(bits.size, np.uint32))
    np.testing.assert_array_equal(acc[finite], bits.view(np.float16)[finite].astype(np.float32))


def test_the_table_carries_the_trending_list_through_save_and_load(tmp_path):
    days = [0, 0, 1, 1, 2, 9, 9, 9, 9, 9]
    ev = pd.DataFrame({"user_id": [0, 1, 2, 3, 4, 0, 1, 2, 3, 4], "item_id": [1, 1, 1, 2, 2, 3, 3, 4, 2, 3],
                       "event_ts": pd.to_datetime(days, unit="D", utc=True)})
    co = build_coengagement(ev, param=10.0)
    np.testing.assert_array_equal(co.trending, [3, 2, 4])  # the latest day's events (10% of 10: one, and its ties)
    back = CoEngagement.load(co.save(tmp_path / "co.npz"))
    np.testing.assert_array_equal(back.trending, co.trending)
    assert co.nbytes == back.nbytes


def test_a_table_saved_before_the_trending_list_loads_without_one(events, tmp_path):
    co = build_coengagement(events, param=50.0)
    np.savez(tmp_path / "old.npz", item_ids=co.item_ids, indptr=co.indptr, cols=co.cols, weights=co.weights,
             meta=np.array([co.method, repr(co.param), repr(co.dense_scale)]), dense=co.dense)
    assert CoEngagement.load(tmp_path / "old.npz").trending is None
