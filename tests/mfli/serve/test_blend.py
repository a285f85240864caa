"""Blend mode: weighted reciprocal-rank fusion of user mode, co-engagement and trigger lists."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.serve.blend import (
    RRF_K,
    BlendConfig,
    BlendWeights,
    blend,
    choose_blend_weights,
    choose_new_item_credit,
)

KNOWN = np.array([1, 2, 3, 4, 5, 6], np.int64)  # items with training events; 50 and 51 are new


def _rows(*lists: list[int], width: int = 5) -> np.ndarray:
    out = np.full((len(lists), width), -1, np.int64)
    for b, row in enumerate(lists):
        out[b, : len(row)] = row
    return out


def test_user_mode_alone_when_the_other_weights_are_zero():
    user = _rows([3, 1, 2], [6, 5])
    ids, sc = blend(user, _rows([4, 1], [1]), _rows([2, 50], [51]),
                    BlendWeights(coengagement=0.0, trigger=0.0), KNOWN, 4)
    np.testing.assert_array_equal(ids, [[3, 1, 2, -1], [6, 5, -1, -1]])
    assert np.isneginf(sc[0, 3])
    assert sc[0, 0] == pytest.approx(1 / RRF_K)


def test_an_item_on_two_lists_outranks_the_head_of_one():
    user = _rows([3, 1, 2])
    co = _rows([4, 2])
    ids, sc = blend(user, co, None, BlendWeights(coengagement=1.0, trigger=0.0), KNOWN, 5)
    # 2: 1/(K+2) + 1/(K+1) beats 3's 1/K and 4's 1/K
    assert ids[0, 0] == 2
    assert sc[0, 0] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert set(ids[0][ids[0] >= 0]) == {1, 2, 3, 4}


def test_new_items_take_the_coengagement_share_at_their_better_rank_elsewhere():
    user = _rows([3, 50])
    co = _rows([3])
    trig = _rows([50, 3])
    w = BlendWeights(coengagement=1.0, trigger=0.0)
    ids, sc = blend(user, co, trig, w, KNOWN, 3)
    # new item 50: user rank 1 + the co-engagement weight at its better rank (trigger, 0); 3 (known)
    # gets no trigger term, as the trigger weight is 0
    s50 = 1 / (RRF_K + 1) + 1 / RRF_K
    s3 = 1 / RRF_K + 1 / RRF_K
    assert dict(zip(ids[0].tolist(), sc[0].tolist()))[50] == pytest.approx(s50)
    assert dict(zip(ids[0].tolist(), sc[0].tolist()))[3] == pytest.approx(s3)
    off = BlendWeights(coengagement=1.0, trigger=0.0, new_items_best_rank=False)
    ids_off, sc_off = blend(user, co, trig, off, KNOWN, 3)
    assert dict(zip(ids_off[0].tolist(), sc_off[0].tolist()))[50] == pytest.approx(1 / (RRF_K + 1))


def test_weights_are_chosen_on_validation_recall():
    # validation positives are the co-engagement list's items: any co-engagement weight > 0 helps
    user = _rows([1, 2, 3, 4, 5], [6, 5, 4, 3, 2], width=5)
    co = _rows([6], [1])
    pos = [np.array([6]), np.array([1])]
    w, table = choose_blend_weights(user, co, None, KNOWN, pos, k=1, coengagement_grid=(0.0, 0.5, 2.0),
                                    trigger_grid=(0.0, 0.3))
    assert table["0/0"] == 0.0 and table["2/0"] == 1.0
    assert w.coengagement == 2.0 and w.trigger == 0.0
    # ties go to the first (smallest) grid point
    w2, _ = choose_blend_weights(user, co, None, KNOWN, [np.array([99]), np.array([99])], k=1)
    assert (w2.coengagement, w2.trigger) == (0.0, 0.0)


def test_a_new_item_only_user_mode_found_takes_the_share_at_its_user_rank():
    user = _rows([3, 51, 1])
    w = BlendWeights(coengagement=0.5, trigger=0.0)
    ids, sc = blend(user, _rows([1]), None, w, KNOWN, 3)
    got = dict(zip(ids[0].tolist(), sc[0].tolist()))
    assert got[51] == pytest.approx(1.5 / (RRF_K + 1))
    assert got[1] == pytest.approx(1 / (RRF_K + 2) + 0.5 / RRF_K)
    assert got[3] == pytest.approx(1 / RRF_K)


def test_new_items_take_the_trending_share_too():
    """Neither the co-engagement nor the trending list can hold an item without events: a new item takes
    both weights at its better rank in the user and trigger lists."""
    user = _rows([3, 50])
    trend = _rows([3, 4])
    w = BlendWeights(coengagement=0.5, trigger=0.0, trending=1.0)
    ids, sc = blend(user, _rows([3]), None, w, KNOWN, 4, trend)
    got = dict(zip(ids[0].tolist(), sc[0].tolist()))
    assert got[50] == pytest.approx(1 / (RRF_K + 1) + 1.5 / (RRF_K + 1))
    assert got[3] == pytest.approx(1 / RRF_K + 0.5 / RRF_K + 1 / RRF_K)
    assert got[4] == pytest.approx(1 / (RRF_K + 1))
    only_trend = BlendWeights(coengagement=0.0, trigger=0.0, trending=1.0)
    got = dict(zip(*[a[0].tolist() for a in blend(user, None, None, only_trend, KNOWN, 4, trend)]))
    assert got[50] == pytest.approx(2 / (RRF_K + 1))


def test_the_trending_weight_is_chosen_on_validation_recall():
    user = _rows([1, 2], [2, 1], width=2)
    trend = _rows([6, 5], [6, 5], width=2)  # the positive is the first trending item for both users
    pos = [np.array([6]), np.array([6])]
    w, table = choose_blend_weights(user, _rows([1], [2]), None, KNOWN, pos, k=2, coengagement_grid=(0.0,),
                                    trending=trend, trending_grid=(0.0, 0.5, 1.0))
    # at 0.5 the trending head scores below both user items; at 1 it ties user mode's head and enters
    assert w.trending == 1.0 and w.coengagement == 0.0
    grid = {key: r for key, r in table.items() if not key.startswith("new_items:")}
    assert grid == {"0/0/0": 0.0, "0/0/0.5": 0.0, "0/0/1": 1.0}
    w, table = choose_blend_weights(user, _rows([1], [2]), None, KNOWN, pos, k=2, coengagement_grid=(0.0,))
    grid = [key for key in table if not key.startswith("new_items:")]
    assert w.trending == 0.0 and grid == ["0/0"]  # no trending list: the earlier keys


def test_blend_lists_serve_the_trending_list_without_history_or_removed_items():
    from types import SimpleNamespace

    from mfli.serve.blend import blend_lists

    lists = SimpleNamespace(item_ids=np.array([[1, 2], [3, 4]]))
    retriever = SimpleNamespace(retrieve_users=lambda q, k, exclude: lists)
    removed = np.zeros(10, bool)
    removed[4] = True  # item 14 is tombstoned
    index = SimpleNamespace(rows_of=lambda ids: np.where(ids >= 10, ids - 10, -1), removed_mask=lambda: removed)
    table = SimpleNamespace(retrieve=lambda h, k, exclude: (np.full((len(h), k), -1, np.int64), None),
                            trending=np.array([14, 11, 12, 13, 15], np.int64))
    _, _, _, trend = blend_lists(retriever, table, index, np.zeros((2, 1, 2)), [np.array([11]), np.array([13])],
                                 depth=3, triggers=0)
    np.testing.assert_array_equal(trend, [[12, 13, -1], [11, 12, -1]])
    table.trending = None  # a table saved before the list
    assert blend_lists(retriever, table, index, np.zeros((2, 1, 2)), [[11], [13]], 3, 0)[3] is None


def test_blend_config_round_trips_through_the_serving_config():
    from mfli.serve.blend import BlendConfig
    from mfli.serve.config import ServingConfig

    cfg = ServingConfig(blend=BlendConfig(BlendWeights(coengagement=0.7, trigger=0.2, trending=0.5, new_items=2.0),
                                          depth=150, triggers=5))
    back = ServingConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.blend.weights.coengagement == 0.7 and back.blend.weights.trending == 0.5
    assert back.blend.weights.new_items == 2.0
    old = cfg.to_dict()
    del old["blend"]["weights"]["trending"]  # written before the trending list: left out
    del old["blend"]["weights"]["new_items"]  # written before the new-item credit: none
    assert ServingConfig.from_dict(old).blend.weights.trending == 0.0
    assert ServingConfig.from_dict(old).blend.weights.new_items == 0.0
    assert ServingConfig.from_dict(ServingConfig().to_dict()).blend is None  # off unless chosen
    bad = cfg.to_dict()
    bad["blend"]["weights"]["cooc"] = 1.0
    with pytest.raises(ValueError, match="unknown blend weight fields"):
        ServingConfig.from_dict(bad)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        BlendConfig(depth=0)
    with pytest.raises(ValueError, match=">= 0"):
        BlendConfig(BlendWeights(coengagement=-1.0))
    with pytest.raises(ValueError, match=">= 0"):
        BlendConfig(BlendWeights(trending=-0.5))


def test_no_validation_users_means_user_mode_alone():
    from types import SimpleNamespace

    from mfli.eval.blend_select import choose_blend

    empty = SimpleNamespace(users=np.zeros(0, np.int64), histories=[], positives=[])
    cfg, table = choose_blend(None, None, None, empty, None)
    assert (cfg.weights.coengagement, cfg.weights.trigger, table) == (0.0, 0.0, {})


def test_first_positions_match_a_per_request_lookup():
    from mfli.serve.blend_kernels import first_positions as row_positions

    rng = np.random.default_rng(0)
    B, D, k = 7, 12, 9
    pool = rng.choice(np.array([2**40 + 5, 3, 17, 99, 2**62, 8, 41, 56, 70, 12, 1000, 7, 64, 5, 31], np.int64),
                      size=(B, 20))
    rows = np.full((B, D), -1, np.int64)
    ids = np.full((B, k), -1, np.int64)
    for b in range(B):
        r = np.unique(pool[b])[: D - b % 3]  # distinct per request, some padding
        rows[b, : len(r)] = rng.permutation(r)
        ids[b, : k - b % 4] = rng.choice(np.concatenate([r, [123456, 2**50]]), k - b % 4, replace=False)
    got = row_positions(ids, rows)
    for b in range(B):
        pos = {int(i): j for j, i in enumerate(rows[b].tolist()) if i >= 0}
        want = [pos.get(int(i), -1) if i >= 0 else -1 for i in ids[b].tolist()]
        assert got[b].tolist() == want
    assert (row_positions(ids, np.full((B, D), -1, np.int64)) == -1).all()


def test_keep_only_drops_ids_and_keeps_the_order():
    from mfli.eval.blend_select import keep_only

    ids = np.array([[9, 4, 7, -1], [100, 3, 101, 4]])
    out = keep_only(ids, np.array([3, 4, 7]))
    np.testing.assert_array_equal(out, [[4, 7, -1, -1], [3, 4, -1, -1]])


def test_weights_are_chosen_without_items_that_have_no_training_event(monkeypatch):
    """On validation an item without any training event can only be a miss (nothing of it is held out),
    while the test period may engage with it: the lists the weights are chosen on leave such items out."""
    from types import SimpleNamespace

    import pandas as pd

    import mfli.eval.blend_select as bs

    seen = {}

    def spy(user, co, trig, known, positives, **kw):
        seen.update(user=user, trig=trig)
        return BlendWeights(0.0, 0.0), {"0/0": 0.0}

    monkeypatch.setattr(bs, "choose_blend_weights", spy)
    lists = SimpleNamespace(item_ids=np.array([[100, 5, 6], [7, 101, 5]]))
    retriever = SimpleNamespace(retrieve_users=lambda q, k, exclude: lists,
                                retrieve_triggers=lambda t, k, exclude: lists)
    index = SimpleNamespace(rows_of=lambda ids: np.zeros_like(ids))
    table = SimpleNamespace(item_ids=np.array([5, 6, 7]),
                            retrieve=lambda h, k, exclude: (np.array([[6, -1], [5, -1]]), None))
    model = SimpleNamespace(user_embeddings=lambda u, h: SimpleNamespace(numpy=lambda: np.zeros((2, 1, 2))))
    events = lambda items: pd.DataFrame({"item_id": items})
    vs = SimpleNamespace(users=np.array([1, 2]), histories=[np.array([7]), np.array([6])],
                         positives=[np.array([5]), np.array([5])], fit=events([5, 6, 7]), valid=events([5]))
    bs.choose_blend(model, retriever, index, vs, table, depth=3, triggers=1)
    for name in ("user", "trig"):
        np.testing.assert_array_equal(seen[name], [[5, 6, -1], [7, 5, -1]])


def test_new_item_credit_adds_to_the_best_rank_share():
    """``new_items`` is more credit for items without training events, at their better rank in the user
    and trigger lists, on top of the co-engagement and trending shares; known items are untouched."""
    user = _rows([3, 50, 1])
    trig = _rows([50])
    base = BlendWeights(coengagement=0.5, trigger=0.0)
    ids0, sc0 = blend(user, _rows([1]), trig, base, KNOWN, 3)
    ids, sc = blend(user, _rows([1]), trig, BlendWeights(coengagement=0.5, trigger=0.0, new_items=2.0), KNOWN, 3)
    got0, got = dict(zip(ids0[0].tolist(), sc0[0].tolist())), dict(zip(ids[0].tolist(), sc[0].tolist()))
    assert got[50] == pytest.approx(got0[50] + 2.0 / RRF_K)  # its better rank is the trigger list's 0
    assert got[3] == got0[3] and got[1] == got0[1]
    assert ids[0, 0] == 50
    # without the best-rank rule the credit is the new-item weight alone
    off = BlendWeights(coengagement=0.5, trigger=0.0, new_items_best_rank=False, new_items=2.0)
    got_off = dict(zip(*(a[0].tolist() for a in blend(user, _rows([1]), trig, off, KNOWN, 3))))
    assert got_off[50] == pytest.approx(1 / (RRF_K + 1) + 2.0 / RRF_K)
    with pytest.raises(ValueError, match="blend weights"):
        BlendConfig(BlendWeights(new_items=-1.0))


def _new_item_case(n_users: int, new_share: float, seed: int = 0):
    """Validation lists where user mode ranks one new item (id >= 1000) at rank 3 and the positives are
    that new item for ``new_share`` of the users, else user mode's top item."""
    rng = np.random.default_rng(seed)
    known = np.arange(1, 500, dtype=np.int64)
    user = np.full((n_users, 4), -1, np.int64)
    pos = []
    for b in range(n_users):
        warm = rng.choice(known, 3, replace=False)
        user[b, :3] = warm
        user[b, 3] = 1000 + b
        pos.append(np.array([1000 + b]) if rng.random() < new_share else np.array([warm[0]]))
    return user, known, pos


def test_the_new_item_credit_is_chosen_where_validation_users_reach_new_items():
    user, known, pos = _new_item_case(200, 0.7)
    w, table = choose_blend_weights(user, None, None, known, pos, k=1, coengagement_grid=(0.0,),
                                    trigger_grid=(0.0,))
    assert w.new_items > 0
    assert table[f"new_items:{w.new_items:g}"] > table["new_items:0"]
    # no validation user reaches a new item: every credit ties with none, and none is kept
    user, known, pos = _new_item_case(200, 0.0)
    w, table = choose_blend_weights(user, None, None, known, pos, k=1, coengagement_grid=(0.0,),
                                    trigger_grid=(0.0,))
    assert w.new_items == 0.0 and table["new_items:0"] == 1.0
    # a gain below the noise margin is not taken
    user, known, pos = _new_item_case(200, 0.7)
    w, table = choose_new_item_credit(user, None, None, known, pos, BlendWeights(0.0, 0.0), k=1, min_gain=10.0)
    assert w.new_items == 0.0 and max(table.values()) > table["new_items:0"]


def test_an_empty_credit_grid_leaves_the_weights_alone():
    user, known, pos = _new_item_case(50, 0.7)
    w = BlendWeights(coengagement=0.5, trigger=0.2)
    assert choose_new_item_credit(user, None, None, known, pos, w, k=1, grid=()) == (w, {})
    w2, table = choose_blend_weights(user, None, None, known, pos, k=1, coengagement_grid=(0.0,),
                                     trigger_grid=(0.0,), new_items_grid=())
    assert w2.new_items == 0.0 and list(table) == ["0/0"]
