"""Retriever: both modes against direct re-implementations on small cases, exclusion, explanations."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from topic_vectors import topic_vectors

from mfli.index.delta import apply_delta, assign
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve.exact import exact_search
from mfli.serve.retriever import Retriever, RetrieverConfig

F, D, L, M = 2, 6, 3, 4


def _data(n: int, seed: int) -> np.ndarray:
    """``(n, F, D)`` unit vectors around 5 topics per facet."""
    return topic_vectors(n, seed, F, D, topics=5, noise=0.5)


def _codebooks(emb: np.ndarray) -> np.ndarray:
    cb = np.zeros((L, F, M, D), np.float32)
    for f in range(F):
        r = emb[:, f].copy()
        for layer in range(L):
            km = faiss.Kmeans(D, M, niter=10, seed=layer, verbose=False, min_points_per_centroid=1)
            km.train(r)
            cb[layer, f] = km.centroids
            r = r - km.centroids[km.index.search(r, 1)[1][:, 0]]
    return cb


@pytest.fixture(scope="module")
def world():
    emb = _data(700, 0)
    cb = _codebooks(emb[:600])
    ids = np.arange(700, dtype=np.int64) * 3 + 1
    pop = np.random.default_rng(1).random(600).astype(np.float32)
    full = MultiFacetIndex.build(ids[:600], emb[:600], encode_paths(emb[:600], cb), cb, static_score=pop)
    index = rebalance(full, RebalanceConfig(floor=8, cap=30)).index
    # a delta of 100 new items and 30 tombstones: the references below must see through it
    view = apply_delta(index, ids[600:], emb[600:], assign(emb[600:], cb, index.maps), tombstones=ids[:30])
    return ids, emb, cb, index, view


# ----------------------------------------------------------------------------------------- references
def _all_rows(view):
    """(item ids, embeddings, removed, per facet: cluster id -> rows (base by static score, then delta))."""
    base = view.base
    ids = np.concatenate([base.item_ids, view.item_ids])
    emb = np.concatenate([base.embeddings, view.embeddings])
    removed = np.concatenate([view.removed, np.zeros(view.item_ids.size, bool)])
    return ids, emb, removed


def _cluster_rows(view, f, cid, top):
    base = view.base
    b = list(base.cluster_rows(f, cid))
    dl = list(view.delta_cluster_rows(f, cid))
    return (b if top is None else b[:top]) + (dl if top is None else dl[:top])


def _merge(lists, quotas, k, width):
    q = np.asarray(quotas, float) / np.sum(quotas)
    cols = sorted(((p / q[f], f, p) for f in range(len(lists)) if q[f] > 0 for p in range(width)),
                  key=lambda t: (t[0], t[1]))
    out, seen = [], set()
    for _, f, p in cols:
        if p < len(lists[f]) and lists[f][p][0] not in seen:
            seen.add(lists[f][p][0])
            out.append(lists[f][p] + (f,))
    return out[:k]


def _ref_beam(q, cb_f, path_ids, beam, T, ip, skip):
    occ = [{int(p) // M ** (L - 1 - layer) for p in path_ids} for layer in range(L)]

    def pack(c):
        return sum(k * M ** (len(c) - 1 - i) for i, k in enumerate(c))

    def score(c):
        r = sum(cb_f[layer, k].astype(np.float64) for layer, k in enumerate(c))
        return float(q @ r) if ip else -float(((q - r) ** 2).sum())

    kept = [(k,) for k in range(M) if not skip or k in occ[0]]
    kept = sorted(kept, key=lambda c: -score(c))[:beam]
    for layer in range(1, L):
        pool = []
        for c in kept:
            kids = sorted((c + (k,) for k in range(M)), key=lambda x: -score(x))[:T]
            pool += [x for x in kids if not skip or pack(x) in occ[layer]]
        kept = sorted(pool, key=lambda c: -score(c))[:beam]
    return [pack(c) for c in kept]


def _ref_users(view, cb, Q, k, beam, cfg, exclude):
    ids, emb, removed = _all_rows(view)
    base = view.base
    m = base.paths_per_item
    T = min(M, cfg.expand or M)
    ip = cfg.beam_score == "ip"
    w = np.ones(F) if cfg.facet_weights is None else np.asarray(cfg.facet_weights)
    out = []
    for b in range(Q.shape[0]):
        ex = set(exclude[b]) if exclude is not None else set()
        lists, pooled = [], []
        for f in range(F):
            mp = base.maps[f]
            paths = _ref_beam(Q[b, f].astype(np.float64), cb[:, f], mp.path_ids, beam, T, ip, cfg.skip_empty)
            rank = {}
            for r, p in enumerate(paths):
                for c in mp.describe(p)["clusters"]:
                    rank.setdefault(c, r)
            cl = sorted(rank)
            if cfg.clusters_per_query is not None:
                cent = mp.cluster_centroids
                cs = {c: float(Q[b, f] @ cent[c]) * (1 if ip else 2) - (0 if ip else float(cent[c] @ cent[c]))
                      for c in cl}
                cl = sorted(cl, key=lambda c: (-cs[c], rank[c]))[: cfg.clusters_per_query]
            cands = []
            for c in cl:
                for row in _cluster_rows(view, f, c, cfg.beam_items_per_cluster):
                    if removed[row] or ids[row] in ex:
                        continue
                    if cfg.merge == "sum":
                        s = float(sum(w[g] * Q[b, g] @ emb[row, g] for g in range(F)))
                    else:
                        s = float(Q[b, f] @ emb[row, f])
                    cands.append((int(row), s, c, rank[c]))
            cands.sort(key=lambda t: -t[1])
            lists.append(cands[: k * m])  # an item reached through m paths may repeat
            pooled += cands
        if cfg.merge == "sum":
            pooled.sort(key=lambda t: -t[1])
            res, seen = [], set()
            for t in pooled:
                if t[0] not in seen:
                    seen.add(t[0])
                    res.append(t)
            out.append([ids[t[0]] for t in res[:k]])
        else:
            quotas = cfg.quotas if cfg.quotas is not None else [1] * F
            out.append([ids[t[0]] for t in _merge(lists, quotas, k, k * m)])
    return out


def _ref_triggers(view, lists_in, k, cfg, exclude, rng):
    ids, emb, removed = _all_rows(view)
    base = view.base
    B, K = len(lists_in), cfg.n_clusters
    assign_all = np.concatenate([base.assignments, view.assignments])
    per_facet = []
    for f in range(F):
        U = rng.random((B, K)) if cfg.sampling == "multinomial" else None
        fl = []
        for b, trig in enumerate(lists_in):
            known = [(p, t, int(view.rows_of([t])[0])) for p, t in enumerate(trig)]
            known = [x for x in known if x[2] >= 0]
            ex = set(exclude[b]) if exclude is not None else set()
            if cfg.exclude_triggers:
                ex |= {t for _, t, _ in known}
            hist, last = {}, {}
            for p, t, row in known:
                for c in assign_all[row, f]:
                    c = int(c)
                    hist[c] = hist.get(c, 0) + 1
                    if c not in last or p >= last[c][0]:
                        last[c] = (p, t)
            groups = sorted(hist)
            if not groups:
                fl.append([])
                continue
            if cfg.sampling == "topk":
                chosen = sorted(groups, key=lambda c: (-hist[c], -last[c][0], c))[:K]
                weight = {c: hist[c] for c in chosen}
            else:
                counts = np.array([hist[c] for c in groups])
                cdf = np.cumsum(counts) / counts.sum()
                draws = np.searchsorted(cdf, U[b], side="right")
                weight = {groups[i]: int(n) for i, n in enumerate(np.bincount(draws, minlength=len(groups))) if n}
            qmean = np.mean([emb[row, f] for _, _, row in known], axis=0)
            cands = []
            for c in sorted(weight):
                scored = []
                for row in _cluster_rows(view, f, c, cfg.items_per_cluster):
                    if removed[row] or ids[row] in ex:
                        continue
                    scored.append((float(emb[row, f] @ qmean), row))
                scored.sort(key=lambda t: -t[0])
                cands += [(r / weight[c], -s, c, row, s) for r, (s, row) in enumerate(scored)]
            cands.sort(key=lambda t: t[:3])
            res, seen = [], set()
            for _, _, c, row, s in cands:
                if row not in seen:
                    seen.add(row)
                    res.append((row, s, c, last[c][1]))
            fl.append(res[:k])
        per_facet.append(fl)
    quotas = cfg.quotas if cfg.quotas is not None else [1] * F
    return [_merge([per_facet[f][b] for f in range(F)], quotas, k, k) for b in range(B)], ids


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("score,skip,expand", [("ip", True, None), ("ip", True, 2), ("ip", False, None),
                                               ("l2", True, None), ("l2", True, 2), ("l2", False, 3)])
def test_beam_equals_brute_force_walk(world, score, skip, expand):
    _, _emb, cb, index, _ = world
    rng = np.random.default_rng(5)
    Q = rng.standard_normal((12, F, D)).astype(np.float32)
    r = Retriever(index, cb, config=RetrieverConfig(beam_score=score, skip_empty=skip, expand=expand))
    for beam in (1, 3, 5):
        for f in range(F):
            paths, scores = r.beam_search(Q[:, f], f, beam)
            T = min(M, expand or M)
            for b in range(12):
                ref = _ref_beam(Q[b, f].astype(np.float64), cb[:, f], index.maps[f].path_ids, beam, T,
                                score == "ip", skip)
                got = [int(p) for p in paths[b] if p >= 0]
                assert got == ref
                assert (np.diff(scores[b][: len(got)]) <= 1e-6).all()


@pytest.mark.parametrize("cfg", [
    RetrieverConfig(beam=3),
    RetrieverConfig(beam=4, merge="sum", facet_weights=(1.0, 0.5)),
    RetrieverConfig(beam=5, clusters_per_query=2, beam_score="l2"),
    RetrieverConfig(beam=6, clusters_per_query=1, beam_score="ip", merge="sum"),
    RetrieverConfig(beam=4, quotas=(3, 1), beam_items_per_cluster=10),
])
def test_user_mode_equals_direct_computation(world, cfg):
    ids, emb, cb, _, view = world
    rng = np.random.default_rng(7)
    Q = emb[rng.choice(700, 10)] + 0.1 * rng.standard_normal((10, F, D)).astype(np.float32)
    exclude = [list(rng.choice(ids, 20)) for _ in range(10)]
    out = Retriever(view, cb, config=cfg).retrieve_users(Q, 15, exclude=exclude)
    ref = _ref_users(view, cb, Q, 15, cfg.beam, cfg, exclude)
    for b in range(10):
        got = [int(i) for i in out.item_ids[b] if i >= 0]
        assert got == [int(i) for i in ref[b]]
        assert not set(got) & set(exclude[b]) and not set(got) & set(ids[:30].tolist())


def test_full_beam_in_sum_mode_is_exact_search(world):
    ids, _emb, cb, index, _ = world
    rng = np.random.default_rng(3)
    Q = rng.standard_normal((8, F, D)).astype(np.float32)
    seen = [list(rng.choice(ids[:600], 30)) for _ in range(8)]
    r = Retriever(index, cb, config=RetrieverConfig(beam=M**L, expand=M, merge="sum"))
    out = r.retrieve_users(Q, 40, exclude=seen)
    ex_ids, ex_scores = exact_search(Q, index.embeddings, 40, index.item_ids, exclude=seen)
    np.testing.assert_array_equal(out.item_ids, ex_ids)
    np.testing.assert_allclose(out.scores, ex_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [
    RetrieverConfig(sampling="topk", n_clusters=2, items_per_cluster=6),
    RetrieverConfig(sampling="topk", n_clusters=5, items_per_cluster=None, exclude_triggers=False, quotas=(1, 2)),
    RetrieverConfig(sampling="multinomial", n_clusters=3, items_per_cluster=8),
    RetrieverConfig(sampling="multinomial", n_clusters=6, items_per_cluster=None, quotas=(1, 0)),
])
def test_trigger_mode_equals_direct_computation(world, cfg):
    ids, _, cb, _, view = world
    rng = np.random.default_rng(11)
    # triggers include tombstoned, delta and unknown items and repeated clusters
    lists = [[int(x) for x in rng.choice(ids, rng.integers(1, 9))] for _ in range(9)] + [[10**9], []]
    lists[0] += [int(ids[0]), int(ids[650])]
    exclude = [list(rng.choice(ids, 15)) for _ in lists]
    seed = 42
    out = Retriever(view, cb, config=cfg).retrieve_triggers(lists, 12, exclude=exclude,
                                                            rng=np.random.default_rng(seed))
    ref, all_ids = _ref_triggers(view, lists, 12, cfg, exclude, np.random.default_rng(seed))
    for b in range(len(lists)):
        got = [int(i) for i in out.item_ids[b] if i >= 0]
        assert got == [int(all_ids[t[0]]) for t in ref[b]]
        np.testing.assert_allclose(out.scores[b][: len(got)], [t[1] for t in ref[b]], rtol=1e-5, atol=1e-6)
        assert out.cluster[b][: len(got)].tolist() == [t[2] for t in ref[b]]
        assert out.source[b][: len(got)].tolist() == [t[3] for t in ref[b]]
        assert out.facet[b][: len(got)].tolist() == [t[4] for t in ref[b]]
        assert not set(got) & set(exclude[b])
    assert (out.item_ids[-2:] == -1).all()  # unknown-only and empty requests get nothing
    if cfg.quotas == (1, 0):
        assert (out.facet[out.item_ids >= 0] == 0).all()


def test_multinomial_draws_follow_the_histogram(world):
    ids, _, cb, index, _ = world
    # one request whose triggers sit in two facet-0 clusters with counts 3 and 1
    c = index.clusters[:, 0]
    big, small = np.unique(c, return_counts=True)[0][:2]
    rows = list(np.flatnonzero(c == big)[:3]) + list(np.flatnonzero(c == small)[:1])
    trig = [[int(ids[r]) for r in rows]]
    cfg = RetrieverConfig(sampling="multinomial", n_clusters=1, items_per_cluster=5, quotas=(1, 0))
    r = Retriever(index, cb, config=cfg)
    hits = {int(big): 0, int(small): 0}
    for s in range(400):
        out = r.retrieve_triggers(trig, 1, rng=np.random.default_rng(s))
        hits[int(out.cluster[0, 0])] += 1
    assert 0.65 < hits[int(big)] / 400 < 0.85  # expected 3/4


def test_seeded_retriever_is_reproducible(world):
    ids, _, cb, _, view = world
    lists = [[int(x) for x in ids[i:i + 5]] for i in range(40, 200, 20)]
    a = Retriever(view, cb, config=RetrieverConfig(seed=3)).retrieve_triggers(lists, 10)
    b = Retriever(view, cb, config=RetrieverConfig(seed=3)).retrieve_triggers(lists, 10)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_explanations_and_exclusion(world):
    ids, emb, cb, _, view = world
    lists = [[int(ids[50]), int(ids[51]), int(ids[620])], [int(ids[300])]]
    r = Retriever(view, cb, config=RetrieverConfig(sampling="topk"))
    out = r.retrieve_triggers(lists, 20)
    assign_all = np.concatenate([view.base.assignments, view.assignments])[:, :, 0]
    for b, expl in enumerate(out.explanations()):
        assert expl and len(expl) == (out.item_ids[b] >= 0).sum()
        for e in expl:
            assert e["item_id"] not in lists[b]  # triggers are excluded by default
            f = r.facet_names.index(e["facet"])
            row = view.rows_of([e["item_id"]])[0]
            assert assign_all[row, f] == e["cluster"]
            assert e["trigger"] in lists[b]
            assert assign_all[view.rows_of([e["trigger"]])[0], f] == e["cluster"]
    seen = [list(ids[100:400]), []]
    out = Retriever(view, cb, config=RetrieverConfig(beam=8)).retrieve_users(emb[[150, 160]], 30, exclude=seen)
    assert not np.isin(out.item_ids[0], ids[100:400]).any()
    for e in out.explanations()[1]:
        assert set(e) == {"item_id", "facet", "cluster", "path_rank"} and 0 <= e["path_rank"] < 8


def test_config_and_input_errors(world):
    _, _, cb, index, _ = world
    with pytest.raises(ValueError, match="sampling"):
        Retriever(index, cb, config=RetrieverConfig(sampling="greedy"))
    with pytest.raises(ValueError, match="quotas"):
        Retriever(index, cb, config=RetrieverConfig(quotas=(1, 1, 1)))
    with pytest.raises(ValueError, match="codebooks"):
        Retriever(index, cb[:, :1])
    with pytest.raises(ValueError, match="needs the codebooks"):
        Retriever(index).retrieve_users(np.zeros((1, F, D), np.float32), 5)
    with pytest.raises(ValueError, match="query_emb"):
        Retriever(index, cb).retrieve_users(np.zeros((1, F, D + 1), np.float32), 5)
    with pytest.raises(ValueError, match="one list per request"):
        Retriever(index, cb).retrieve_users(np.zeros((2, F, D), np.float32), 5, exclude=[[1]])


def test_update_swaps_delta_views(world):
    ids, emb, cb, index, view = world
    r = Retriever(index, cb, config=RetrieverConfig(beam=M**L, expand=M, merge="sum"))
    q = emb[650:651]
    assert r.retrieve_users(q, 5).item_ids[0, 0] != ids[650]
    scorer, router = r._scorer, r._router
    r.update(view)
    assert (r._scorer, r._router) == (scorer, router)  # the full snapshot's structures are reused
    assert r.retrieve_users(q, 5).item_ids[0, 0] == ids[650]


@pytest.fixture(scope="module")
def world_m2(world):
    ids, emb, cb, _, _ = world
    full = MultiFacetIndex.build(ids[:600], emb[:600], encode_paths(emb[:600], cb, m=2), cb)
    index = rebalance(full, RebalanceConfig(floor=8, cap=40)).index
    new = np.stack([assign(emb[600:], cb, index.maps)] * 2, axis=2)  # both slots in the best cluster
    view = apply_delta(index, ids[600:], emb[600:], new, tombstones=ids[:10])
    return ids, emb, cb, index, view


@pytest.mark.parametrize("cfg", [RetrieverConfig(beam=4), RetrieverConfig(beam=3, merge="sum"),
                                 RetrieverConfig(sampling="topk", n_clusters=3, items_per_cluster=5)])
def test_top_m_paths_index(world_m2, cfg):
    ids, emb, cb, index, view = world_m2
    assert index.paths_per_item == 2
    rng = np.random.default_rng(2)
    r = Retriever(view, cb, config=cfg)
    if cfg.sampling == "topk":
        lists = [[int(x) for x in rng.choice(ids, 4)] for _ in range(6)]
        out = r.retrieve_triggers(lists, 10)
        ref, all_ids = _ref_triggers(view, lists, 10, cfg, None, np.random.default_rng(0))
        expect = [[int(all_ids[t[0]]) for t in rb] for rb in ref]
    else:
        Q = emb[rng.choice(700, 6)]
        out = r.retrieve_users(Q, 10)
        expect = [[int(i) for i in rb] for rb in _ref_users(view, cb, Q, 10, cfg.beam, cfg, None)]
    for b in range(6):
        got = [int(i) for i in out.item_ids[b] if i >= 0]
        assert got == expect[b] and len(set(got)) == len(got)
